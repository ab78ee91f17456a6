"""Buckets tab: plan aspect-ratio buckets, look at how images will be cropped, cache latents."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from core.config import BucketSettings, CacheConfig
from core.dataset.buckets import BucketAssignment, crop_to_bucket
from core.dataset.images import ImageError, open_image
from core.jobs.run_folder import RunFolder
from tabs.charts import bar_frame, bar_plot, bar_summary
from tabs.job_section import JobSection

SAMPLES = 12
CACHE_ONLY_FIELDS = [n for n in CacheConfig.model_fields if n not in BucketSettings.model_fields]


def load_plan(run_dir: str | None) -> dict | None:
    return RunFolder(run_dir).read_bucket_plan() if run_dir else None


def bucket_label(bucket) -> str:
    return f"{bucket[0]}×{bucket[1]}"


def plan_summary(plan: dict | None) -> str:
    if plan is None:
        return "No plan yet: choose the dataset and settings, then **Plan buckets**."
    s = plan["summary"]
    lines = [f"### {s['images']} images in {s['buckets_used']} buckets",
             f"**Upscaled:** {s['upscaled']} · **mean crop loss:** {100 * s['mean_crop_loss']:.1f}% of pixels"]
    if plan.get("broken"):
        lines.append(f"**Unreadable, skipped:** {len(plan['broken'])}")
    if not plan.get("complete", True):
        lines.append("*The plan was stopped before the end: it is partial.*")
    return "\n\n".join(lines)


def plan_warnings(plan: dict | None) -> str:
    if not plan:
        return ""
    s, notes = plan["summary"], []
    if s.get("small_buckets"):
        notes.append("Buckets with fewer images than the batch size (their batches will be smaller): "
                     + ", ".join(bucket_label(b) for b in s["small_buckets"]))
    if s.get("strong_upscale"):
        notes.append(f"{len(s['strong_upscale'])} image(s) strongly upscaled (blurry in training): "
                     + ", ".join(f"`{Path(p).name}`" for p in s["strong_upscale"][:10]))
    if s.get("tiny_images"):
        notes.append(f"{len(s['tiny_images'])} tiny image(s) (a side below min_bucket_reso): "
                     + ", ".join(f"`{Path(p).name}`" for p in s["tiny_images"][:10]))
    return "\n".join(f"- ⚠ {n}" for n in notes) or "No warnings."


def bucket_chart(plan: dict | None) -> tuple:
    """The images-per-bucket chart's frame and its summary."""
    rows = [{"label": bucket_label(b["bucket"]), "count": b["images"]} for b in (plan or {}).get("buckets", [])]
    return bar_frame(rows), bar_summary(rows, "images")


def bucket_labels(plan: dict | None) -> list[str]:
    return [bucket_label(b["bucket"]) for b in (plan or {}).get("buckets", [])]


def bucket_samples(plan: dict | None, label: str | None) -> list:
    """Thumbnails of up to SAMPLES images of a bucket, cropped exactly as training will see them."""
    samples = []
    for entry in (plan or {}).get("images", []):
        if len(samples) >= SAMPLES or bucket_label(entry["bucket"]) != label:
            continue
        assignment = BucketAssignment.from_dict(entry)
        try:
            image = crop_to_bucket(open_image(assignment.path), assignment)
        except ImageError:
            continue
        image.thumbnail((256, 256))
        samples.append((image, f"{Path(entry['path']).name} · {bucket_label(entry['original'])}"))
    return samples


def build(blocks: gr.Blocks) -> None:
    with gr.Tab("Buckets & latents", id="buckets", elem_id="tab-buckets"):
        gr.Markdown("Group images into buckets of about the training area (nothing squashed, little "
                    "cropped), check the plan, then cache the VAE latents so training is faster and lighter.")
        planner = JobSection("bucket", "Plan buckets")
        plan_state = gr.State(None)
        summary = gr.Markdown(plan_summary(None), elem_id="bucket-summary")
        chart = bar_plot("Images per bucket (width×height)", "bucket-chart")
        chart_summary = gr.HTML(bucket_chart(None)[1], elem_id="bucket-chart-summary")
        warnings = gr.Markdown(elem_id="bucket-warnings")
        with gr.Row():
            chosen = gr.Dropdown(label="Bucket", choices=[], elem_id="bucket-choice")
        samples = gr.Gallery(label="As cropped for training", columns=6, height=300, allow_preview=False,
                             elem_id="bucket-samples")
        with gr.Accordion("Latent cache", open=True):
            gr.Markdown("Uses the dataset and bucket settings above.")
            cache = JobSection("cache", "Cache latents", fields=CACHE_ONLY_FIELDS,
                               base_form=planner.form)

    planner.wire(blocks)
    cache.wire(blocks)

    def show_plan(run_dir):
        plan = load_plan(run_dir)
        labels = bucket_labels(plan)
        first = labels[0] if labels else None
        return plan, plan_summary(plan), *bucket_chart(plan), plan_warnings(plan), \
            gr.Dropdown(choices=labels, value=first), bucket_samples(plan, first)

    planner.panel.finished.change(show_plan, inputs=planner.panel.finished,
                                  outputs=[plan_state, summary, chart, chart_summary, warnings, chosen, samples])
    chosen.input(bucket_samples, inputs=[plan_state, chosen], outputs=samples)
