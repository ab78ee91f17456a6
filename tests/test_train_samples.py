"""Training samples: kohya prompt files, sample images from the tiny demo model, CLIP scores."""
import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from core.config.models import PromptSettings
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder
from core.train import samples as samples_mod
from core.train.samples import SamplePrompt, clip_scores, generate_samples, parse_prompt_line, read_prompt_file

# --- prompt files ----------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("a cat, masterpiece --n lowres, blurry --w 512 --h 768 --s 28 --l 7 --d 42",
     SamplePrompt("a cat, masterpiece", "lowres, blurry", 512, 768, 28, 7.0, 42)),
    ("dog --d 1 --l 3.5 --n ugly, bad hands, (worst:1.2) --s 5 --h 100 --w 130",
     SamplePrompt("dog", "ugly, bad hands, (worst:1.2)", 128, 96, 5, 3.5, 1)),
    ("just a prompt", SamplePrompt("just a prompt", "", 512, 512, 30, 7.5, None)),
    ("  tabs\tand  spaces  \t--W\t63   --H 519  ", SamplePrompt("tabs\tand  spaces", width=64, height=512)),
    ("tiny --w 0 --h 8", SamplePrompt("tiny", width=64, height=64)),
    ("a -- b, a--b --s 3", SamplePrompt("a -- b, a--b", steps=3)),
    ("--n only a negative", SamplePrompt("", "only a negative")),
    ("twice --s 3 --s 4 --n", SamplePrompt("twice", steps=4)),
    ("", None), ("   ", None), ("# a comment --w 64", None), ("  # indented comment", None),
])
def test_parse_prompt_line(line, expected):
    assert parse_prompt_line(line) == expected


@pytest.mark.parametrize("line, message", [
    ("cat --x 1", "unknown option --x"),
    ("cat --ss euler_a", "unknown option --ss"),
    ("cat --w big", "--w (width) needs a whole number, got 'big'"),
    ("cat --h -64", "--h (height) needs a whole number, got '-64'"),
    ("cat --d 1.5", "--d (seed) needs a whole number"),
    ("cat --s", "--s (steps) needs a whole number, got ''"),
    ("cat --s 0", "--s (steps) must be at least 1"),
    ("cat --l seven", "--l (CFG scale) needs a number, got 'seven'"),
    ("cat --l nan", "--l (CFG scale) needs a number"),
])
def test_parse_prompt_line_errors(line, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_prompt_line(line)


def test_read_prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeff# samples\r\nun chat, été --n flou --d 7\r\n\r\n  \r\na dog --w 64 --h 64\r\n"
                     .encode("utf-8"))
    assert read_prompt_file(path) == [SamplePrompt("un chat, été", "flou", seed=7),
                                      SamplePrompt("a dog", width=64, height=64)]


@pytest.mark.parametrize("text, message", [
    ("a cat\n\n--w 64 --q 1\n", ":3: unknown option --q"),
    ("# comment\na cat --l x\n", ":2: --l (CFG scale) needs a number"),
    ("", "has no prompt"),
    ("# only\n\n   \n", "has no prompt"),
])
def test_read_prompt_file_errors(tmp_path, text, message):
    path = tmp_path / "prompts.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_prompt_file(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_read_prompt_file_missing(tmp_path):
    with pytest.raises(ValueError, match="cannot read the sample prompt file"):
        read_prompt_file(tmp_path / "nope.txt")


# --- generation ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(demo_kit):
    from core.models.sd import load_sd_model

    return load_sd_model(str(demo_kit("sd1", 6, 0) / "model"))


def small(text: str) -> SamplePrompt:
    return parse_prompt_line(text + " --w 64 --h 64 --s 2")


def generate(model, prompts, out_dir, step=0, **kwargs):
    kwargs.setdefault("seed", 10)
    return generate_samples(model, model.unet, prompts, out_dir, step, **kwargs)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_samples_written_with_metadata(model, tmp_path):
    prompts = [small("a cat --n dog, blurry --d 3 --l 5"), parse_prompt_line("a dog --w 72 --h 64 --s 2")]
    with JobContext(tmp_path / "run", echo=False) as ctx:
        out = generate(model, prompts, tmp_path / "samples", step=120, ctx=ctx)
    paths = [tmp_path / "samples" / "step00000120-00.png", tmp_path / "samples" / "step00000120-01.png"]
    assert [s.path for s in out] == paths
    assert [s.prompt for s in out] == prompts and [s.seed for s in out] == [3, 11]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [p.name for p in paths]  # no temp files
    first, second = Image.open(paths[0]), Image.open(paths[1])
    assert first.format == "PNG" and first.size == (64, 64) and second.size == (72, 64)
    assert first.text["parameters"] == ("a cat\nNegative prompt: dog, blurry\n"
                                        "Steps: 2, CFG scale: 5, Seed: 3, Size: 64x64")
    assert second.text["parameters"] == "a dog\nSteps: 2, CFG scale: 7.5, Seed: 11, Size: 72x64"
    assert [e["path"] for e in RunFolder(tmp_path / "run").read_events("image")] == [str(p) for p in paths]
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8").splitlines()
    assert len(log) == 1 and "step 120: 2 of 2 sample images" in log[0]


def test_seeds_decide_the_image(model, tmp_path):
    prompts = [small("a cat"), small("a cat")]
    first = generate(model, prompts, tmp_path / "a", seed=10)
    again = generate(model, prompts, tmp_path / "b", seed=10)
    assert all(np.array_equal(pixels(x.path), pixels(y.path)) for x, y in zip(first, again))
    assert not np.array_equal(pixels(first[0].path), pixels(first[1].path))  # seeds 10 and 11
    explicit = generate(model, [small("a cat --d 11")], tmp_path / "c", seed=99)
    assert np.array_equal(pixels(explicit[0].path), pixels(first[1].path))


def test_samples_match_a_plain_pipeline(model, tmp_path):
    """With clip_skip 1 and 75 tokens the project's prompt encoding is diffusers' own."""
    from diffusers import StableDiffusionPipeline

    out = generate(model, [small("a red cat --n blurry --d 5")], tmp_path / "s")
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red cat", negative_prompt="blurry", width=64, height=64, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(pixels(out[0].path), np.asarray(expected))
    skipped = generate(model, [small("a red cat --n blurry --d 5")], tmp_path / "skip",
                       prompt_settings=PromptSettings(clip_skip=2))
    assert not np.array_equal(pixels(skipped[0].path), pixels(out[0].path))
    long = generate(model, [small("a red cat --n blurry --d 5")], tmp_path / "long",
                    prompt_settings=PromptSettings(max_token_length=150))
    assert pixels(long[0].path).shape == (64, 64, 3)


def test_sampling_leaves_training_untouched(model, tmp_path, monkeypatch):
    modules = {"unet": model.unet, "text_encoder": model.text_encoder, "vae": model.vae}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    model.unet.train()
    model.vae.train()
    seen_modes, entered = [], []
    real_generate = samples_mod._generate

    def recording(*args, **kwargs):
        seen_modes.append([m.training for m in modules.values()])
        return real_generate(*args, **kwargs)

    @contextlib.contextmanager
    def autocast():
        entered.append(True)
        yield

    monkeypatch.setattr(samples_mod, "_generate", recording)
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    try:
        generate(model, [small("a cat"), small("a dog --d 4")], tmp_path / "s", autocast=autocast)
        assert torch.equal(torch.get_rng_state(), rng_before)
        assert [m.training for m in modules.values()] == [True, False, True]
    finally:
        model.unet.eval()
        model.vae.eval()
    assert seen_modes == [[False, False, False]] * 2 and len(entered) == 2
    assert model.scheduler.num_inference_steps is None  # the model's scheduler was copied, not used
    for name, module in modules.items():
        assert all(p.grad is None for p in module.parameters())
        assert all(torch.equal(v, before[name][k]) for k, v in module.state_dict().items()), name


def test_a_failing_prompt_is_a_warning(model, tmp_path, monkeypatch):
    real_generate = samples_mod._generate

    def failing(pipe, encoder, prompt, *args):
        if prompt.prompt == "bad":
            raise RuntimeError("CUDA out of memory")
        return real_generate(pipe, encoder, prompt, *args)

    monkeypatch.setattr(samples_mod, "_generate", failing)
    with JobContext(tmp_path / "run", echo=False) as ctx:
        out = generate(model, [small("a cat"), small("bad"), small("a dog")], tmp_path / "s", step=3, ctx=ctx)
    assert [s.path.name for s in out] == ["step00000003-00.png", "step00000003-02.png"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["step00000003-00.png", "step00000003-02.png"]
    warnings = [e["message"] for e in RunFolder(tmp_path / "run").read_events("warning")]
    assert len(warnings) == 1 and "sample 1 ('bad') failed: RuntimeError: CUDA out of memory" in warnings[0]
    assert "2 of 3 sample images" in (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")


def test_sdxl_samples_use_both_text_encoders(demo_kit, tmp_path):
    from core.models.sd import load_sd_model

    xl = load_sd_model(str(demo_kit("sdxl", 6, 0) / "model"))
    out = generate(xl, [small("a cat --d 4"), small("a cat --d 4"), small("a dog --d 4")], tmp_path / "s")
    first, same, other = (pixels(sample.path) for sample in out)
    assert np.array_equal(first, same) and first.shape == (64, 64, 3) and first.std() > 0
    assert not np.array_equal(first, other)  # the prompt reaches the U-Net
    with torch.no_grad():
        xl.text_encoder_2.text_projection.weight.mul_(-1)  # the pooled state reaches it too
    assert not np.array_equal(pixels(generate(xl, [small("a cat --d 4")], tmp_path / "t")[0].path), first)


# --- CLIP score ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random-weight CLIP model folder, laid out like one downloaded from the hub."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from core.models.tokenizer import load_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          projection_dim=16, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              projection_dim=16, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                         projection_dim=16)).save_pretrained(folder)
    load_clip_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def noise_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(3)]


def reference_cosine(folder, image, prompt: str) -> float:
    """The cosine of one pair's CLIP embeddings, from the model's parts."""
    from transformers import AutoImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    ids = CLIPTokenizer.from_pretrained(folder)(prompt, truncation=True, max_length=77, return_tensors="pt")
    pixel_values = AutoImageProcessor.from_pretrained(folder, backend="pil")(images=image, return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.visual_projection(model.vision_model(**pixel_values).pooler_output)
        text_embeds = model.text_projection(model.text_model(input_ids=ids.input_ids).pooler_output)
    return torch.nn.functional.cosine_similarity(image_embeds, text_embeds).item()


@contextlib.contextmanager
def negated_text_projection(clip_dir):
    """The cached CLIP model with its text projection negated: every cosine changes sign."""
    model = samples_mod.load_clip(str(clip_dir.resolve()))[0]
    with torch.no_grad():
        model.text_projection.weight.neg_()
    try:
        yield
    finally:
        with torch.no_grad():
            model.text_projection.weight.neg_()


def test_clip_scores_match_a_reference(clip_dir):
    images, prompts = noise_images(), ["a cat", "a photo of a dog on a sofa", "red " * 100]
    scores = clip_scores(images, prompts, clip_dir)
    assert scores == clip_scores(images, prompts, str(clip_dir))
    with negated_text_projection(clip_dir):
        negated = clip_scores(images, prompts, clip_dir)
    cosines = [reference_cosine(clip_dir, image, prompt) for image, prompt in zip(images, prompts)]
    assert len(set(cosines)) == 3 and 0 not in cosines
    assert scores == pytest.approx([max(100 * c, 0) for c in cosines], abs=1e-4)
    assert negated == pytest.approx([max(-100 * c, 0) for c in cosines], abs=1e-4)
    assert all(0 <= s <= 100 for s in scores + negated)


def test_clip_folder_errors(tmp_path, demo_kit):
    with pytest.raises(ValueError, match="no such folder.*config.json.*preprocessor_config.json"):
        clip_scores(noise_images()[:1], ["a"], tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no CLIP model here"):
        clip_scores(noise_images()[:1], ["a"], tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot load a CLIP model.*openai/clip-vit-base-patch32"):
        clip_scores(noise_images()[:1], ["a"], demo_kit("sd1", 6, 0) / "model" / "unet")


def test_samples_with_clip_scores(model, clip_dir, tmp_path):
    prompts = [small("a cat"), small("a dog")]
    with JobContext(tmp_path / "run", echo=False) as ctx:
        out = generate(model, prompts, tmp_path / "s", step=7, ctx=ctx, clip_dir=str(clip_dir))
        bad = generate(model, prompts[:1], tmp_path / "t", step=8, ctx=ctx, clip_dir=str(tmp_path / "nope"))
    expected = clip_scores([Image.open(s.path) for s in out], ["a cat", "a dog"], clip_dir)
    assert [s.clip_score for s in out] == pytest.approx(expected, abs=1e-4)
    assert bad[0].path.is_file() and bad[0].clip_score is None
    got = RunFolder(tmp_path / "run").read_events()
    metrics = [e for e in got if e["event"] == "metric"]
    assert [(m["name"], m["step"]) for m in metrics] == [("clip_score", 7)]
    assert metrics[0]["value"] == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert any(e["event"] == "warning" and "no CLIP scores" in e["message"] for e in got)
