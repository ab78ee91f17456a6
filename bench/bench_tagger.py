"""WD14 tagger benchmark: is the model the bottleneck of the `tag` job?

In one run, on the same ONNX session and batch size: the `tag` job's images/s (its `run` function
end to end: listing, decoding and preprocessing on worker threads, inference, selecting tags and
writing every caption file with its backup) against the bare session on the same images already
decoded and preprocessed in memory. Target ratio >= 0.9.

With no arguments it builds a synthetic tagger (3x3 convolutions at 448x448, NHWC input like the WD
taggers, about 16 GFLOPs per image: a real WD ViT tagger is several times heavier) and 200 JPEG images
of mixed sizes, so it runs on a CPU in about two minutes. On a CPU the job's own work (about
8 ms per image on the machine it was written on) shares the cores with the model, so the ratio is
roughly model time / (model time + that work); on a GPU the decoding overlaps the model. For a real
tagger on a GPU (onnxruntime-gpu):
    python bench/bench_tagger.py --model /path/wd-vit-tagger-v3 --dataset /path/images --batch-size 8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import Row, print_rows, studio_home  # noqa: E402
from core.captions.taggers.common import images_to_do  # noqa: E402
from core.captions.taggers.wd14 import load_tagger, model_input, predict, run  # noqa: E402
from core.config import TagConfig  # noqa: E402
from core.jobs.protocol import JobContext  # noqa: E402

SIZES = [(448, 448), (512, 384), (384, 512), (600, 600)]
QUICK = ["--images", "16", "--repeats", "1", "--blocks", "4"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="tagger folder (default: build a synthetic one)")
    parser.add_argument("--dataset", default="", help="image folder (default: draw --images JPEGs)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--side", type=int, default=448, help="input side of the synthetic tagger")
    parser.add_argument("--blocks", type=int, default=16, help="stride-1 conv blocks of the synthetic tagger")
    parser.add_argument("--tags", type=int, default=2000, help="tags of the synthetic tagger")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many interleaved timings")
    return parser.parse_args(argv)


def build_tagger(folder: Path, side: int, blocks: int, tags: int) -> None:
    """A WD-layout tagger: NHWC input -> strided and stride-1 3x3 convs -> global mean -> tag scores."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    weights = []
    channels = [(3, 32, 2), (32, 64, 2)] + [(64, 64, 1)] * blocks + [(64, 128, 2)]
    for i, (cin, cout, stride) in enumerate(channels):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin * 255)).astype(np.float32)
        weights.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.flatten()))
        nodes += [helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride] * 2),
                  helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"])]
    head = (rng.standard_normal((128, tags)) * 0.1).astype(np.float32)
    bias = rng.normal(-3, 1, tags).astype(np.float32)  # a few dozen tags above the thresholds
    weights += [helper.make_tensor("head", TensorProto.FLOAT, head.shape, head.flatten()),
                helper.make_tensor("bias", TensorProto.FLOAT, bias.shape, bias)]
    last = f"x{len(channels)}"
    nodes += [helper.make_node("ReduceMean", [last], ["pooled"], axes=[2, 3], keepdims=0),
              helper.make_node("MatMul", ["pooled", "head"], ["raw"]),
              helper.make_node("Add", ["raw", "bias"], ["logits"]),
              helper.make_node("Sigmoid", ["logits"], ["output"])]
    graph = helper.make_graph(
        nodes, "bench-wd14", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", side, side, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", tags])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    categories = [9] * 4 + [4] * (tags // 10) + [0] * (tags - 4 - tags // 10)
    rows = ["tag_id,name,category,count"] + [f"{i},tag_{i},{c},1" for i, c in enumerate(categories)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def draw_dataset(folder: Path, count: int) -> None:
    """Smooth colour fields with noise, as JPEG, in the sizes of SIZES."""
    from PIL import Image

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        base = rng.uniform(0, 255, 3) * np.stack([x, y, 1 - x * y], -1)
        pixels = np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:04d}.jpg", quality=90)


def session_alone(cfg: TagConfig) -> Callable[[], float]:
    """A timer of the session alone on preprocessed arrays, batched as the job batches: images/s."""
    tagger = load_tagger(cfg.model_dir)
    paths, _ = images_to_do(cfg)
    arrays = [model_input(path, tagger.size, cfg.max_image_pixels) for path in paths]
    batch = tagger.fixed_batch or cfg.batch_size
    batches = [arrays[i:i + batch] for i in range(0, len(arrays), batch)]
    predict(tagger, batches[0])  # warm-up

    def timed() -> float:
        started = time.perf_counter()
        for inputs in batches:
            predict(tagger, inputs)
        return len(arrays) / (time.perf_counter() - started)
    return timed


def job_rate(cfg: TagConfig, run_dir: Path, extension: str) -> float:
    """Images/s of one whole `run` call writing a fresh set of caption files."""
    with JobContext(run_dir, echo=False) as ctx:
        started = time.perf_counter()
        result = run(cfg.model_copy(update={"caption_extension": extension}), ctx)
        seconds = time.perf_counter() - started
    assert result["failed"] == 0 and result["written"] == result["images"], result
    return result["written"] / seconds


def measure(args) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-tagger-") as tmp:
        work = Path(tmp)
        with studio_home(work / "home"):  # caption backups stay in the temp folder
            model = Path(args.model) if args.model else work / "tagger"
            dataset = Path(args.dataset) if args.dataset else work / "images"
            if not args.model:
                build_tagger(model, args.side, args.blocks, args.tags)
            if not args.dataset:
                draw_dataset(dataset, args.images)
            cfg = TagConfig(train_data_dir=[str(dataset)], model_dir=str(model), batch_size=args.batch_size,
                            max_data_loader_n_workers=args.workers, existing_captions="overwrite")
            bare = session_alone(cfg)
            alone = job = 0.0
            for i in range(args.repeats):  # interleaved, so a slower spell of the machine hits both
                alone = max(alone, bare())
                job = max(job, job_rate(cfg, work / f"run-{i}", f".bench{i}"))
            count = len(images_to_do(cfg)[0])
            tagger = load_tagger(cfg.model_dir)
    print(f"tagger {model} ({tagger.size}x{tagger.size}, {len(tagger.names)} tags, "
          f"{tagger.session.get_providers()[0]}); {count} images, batch {args.batch_size}, "
          f"{args.workers} decode workers, {os.cpu_count()} CPUs")
    print(f"session alone on preprocessed arrays: {alone:8.2f} images/s")
    print(f"tag job, end to end:                 {job:8.2f} images/s")
    print(f"job cost on top of the model: {1000 / job - 1000 / alone:.1f} ms per image "
          "(decoding, resizing, tag selection, caption write with backup)")
    return [Row("tagger job vs bare onnxruntime", job / alone, ">=", 0.9,
                "tag job's images/s end to end / the bare onnxruntime session on preprocessed arrays",
                f"{job:.2f} vs {alone:.2f} images/s, {count} images, batch {args.batch_size}, "
                f"{tagger.session.get_providers()[0]}")]


if __name__ == "__main__":
    print_rows(measure(parse_args()))
