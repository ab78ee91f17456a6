"""SDXL training on the tiny demo SDXL model: both text encoders and the pooled state, size and crop
conditioning from the bucket plan, per-encoder learning rates, cached text-encoder outputs, single-file
saves that load back, LoRA files with te1/te2 names that diffusers applies, and exact resume."""
import pytest
import torch
from safetensors.torch import load_file
from trainkit import StopDuringTraining, events, train, train_values

from core.config import ConfigError, TrainConfig, validate
from core.config.models import PromptSettings
from core.jobs.protocol import JobContext
from core.models.sd import load_sd_model
from core.train import step
from core.train.conditioning import PromptEncoder
from core.train.data import TrainDataset, build_examples, size_conditioning

LORA = {"train_lora": True, "network_dim": 4, "network_alpha": 2.0, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sdxl", 6, 0)


def config(kit, tmp_path, **overrides) -> TrainConfig:
    return validate(TrainConfig, train_values(kit, tmp_path / "out", **overrides), "test")


def test_size_conditioning_is_the_planned_original_crop_and_bucket():
    from core.dataset.buckets import BucketAssignment

    a = BucketAssignment(path="x.png", original=(300, 200), bucket=(128, 96), resized=(144, 96),
                         crop=(8, 0, 136, 96), repeats=1)
    assert size_conditioning(a, False).tolist() == [200, 300, 0, 8, 96, 128]
    assert size_conditioning(a, True).tolist() == [200, 300, 0, 144 - 136, 96, 128]
    tall = BucketAssignment(path="y.png", original=(100, 400), bucket=(64, 192), resized=(64, 256),
                            crop=(0, 32, 64, 224), repeats=1)
    assert size_conditioning(tall, True).tolist() == [400, 100, 32, 0, 192, 64]


@pytest.mark.parametrize("cache_latents", [True, False])
def test_batches_carry_each_images_sizes_and_crop_to_the_unet(kit, tmp_path, cache_latents):
    cfg = config(kit, tmp_path, cache_latents=cache_latents, latents_dir=str(tmp_path / "latents"), flip_aug=True,
                 flip_p=0.5)
    from core.train.data import prepare_latent_cache

    with JobContext(tmp_path / "run", echo=False) as ctx:
        prepare_latent_cache(cfg, ctx)
        examples = build_examples(cfg, ctx)
    data = TrainDataset(examples, cfg)
    flips = set()
    for key in range(len(examples) * 4):
        item, example = data[key], examples[key % len(examples)]
        flipped = data.rng(key).random() < cfg.flip_p
        flips.add(flipped)
        assert item["time_ids"].tolist() == size_conditioning(example.assignment, flipped).tolist()
        (w, h), (bw, bh) = example.assignment.original, example.bucket
        assert item["time_ids"][[0, 1, 4, 5]].tolist() == [h, w, bh, bw]
    assert flips == {True, False}

    model = load_sd_model(str(kit / "model"))
    seen = []
    model.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]),
                                         with_kwargs=True)
    batch = {"latents": torch.zeros(2, 4, 8, 8), "captions": ["a", "b"],
             "time_ids": torch.stack([data[0]["time_ids"], data[1]["time_ids"]])}
    step.loss_of_batch(batch, model, model.unet, PromptEncoder(model, PromptSettings(), torch.device("cpu")), cfg,
                       torch.float32, torch.device("cpu"))
    assert torch.equal(seen[0]["time_ids"], batch["time_ids"])
    assert seen[0]["text_embeds"].shape == (2, model.text_encoder_2.config.projection_dim)


def test_prompt_states_join_both_encoders_and_pool_the_second(kit):
    from core.models.text import encode_prompts_sdxl, tokenize_prompts

    model = load_sd_model(str(kit / "model"))
    encoder = PromptEncoder(model, PromptSettings(max_token_length=150), torch.device("cpu"))
    states, pooled = encoder.encode(["a red circle", "a blue square, " * 30])
    hidden = model.text_encoder.config.hidden_size + model.text_encoder_2.config.hidden_size
    assert states.shape == (2, 152, hidden) and pooled.shape == (2, model.text_encoder_2.config.projection_dim)
    ids = [tokenize_prompts(t, ["a red circle"], None) for t in (model.tokenizer, model.tokenizer_2)]
    with torch.no_grad():
        first = model.text_encoder(ids[0][:, 0], output_hidden_states=True).hidden_states[-2]
        second = model.text_encoder_2(ids[1][:, 0], output_hidden_states=True)
        short_states, short_pooled = encode_prompts_sdxl([model.text_encoder, model.text_encoder_2], ids)
    torch.testing.assert_close(short_states, torch.cat([first, second.hidden_states[-2]], dim=-1))
    torch.testing.assert_close(short_pooled, second.text_embeds)
    # the pooled state is taken at the EOS token, so the padding after it does not matter
    torch.testing.assert_close(pooled[:1], short_pooled, rtol=1e-5, atol=1e-5)


def test_sdxl_loss_falls_on_a_fixed_batch(kit, tmp_path):
    cfg = config(kit, tmp_path)
    model = load_sd_model(str(kit / "model"))
    model.unet.train()
    encoder = PromptEncoder(model, PromptSettings(), torch.device("cpu"))
    batch = {"latents": torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0)),
             "captions": ["a red circle", "a blue square"],
             "time_ids": torch.tensor([[96, 128, 0, 0, 64, 96], [200, 300, 0, 8, 64, 96]], dtype=torch.float32)}
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(0)  # the same noise and timesteps each step
        loss = step.loss_of_batch(batch, model, model.unet, encoder, cfg, torch.float32, torch.device("cpu"))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_full_run_trains_the_second_encoder_only_and_saves_an_sdxl_file(kit, tmp_path):
    result = train(train_values(kit, tmp_path / "out", max_train_steps=3, train_text_encoder=True,
                                learning_rate_te1=0, learning_rate_te2=1e-3, sample_prompts=str(prompts(tmp_path)),
                                sample_every_n_steps=2), tmp_path / "run")
    saved = load_sd_model(result["model"])
    base = load_sd_model(str(kit / "model"))
    assert saved.arch == "sdxl"
    for part, changed in (("unet", True), ("text_encoder", False), ("text_encoder_2", True), ("vae", False)):
        a, b = getattr(base, part).state_dict(), getattr(saved, part).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a) == changed, part
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "text_encoder_2" in log and sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "step00000002-00.png", "step00000003-00.png"]


def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle --w 64 --h 64 --s 2\n", encoding="utf-8")
    return path


def test_cached_text_encoder_outputs_train_like_encoding_each_step(kit, tmp_path):
    """The cache holds what each step would encode (states and pooled), so the runs match up to the
    float rounding of encoding captions in other batches (Adam then amplifies it a little)."""
    values = {"max_train_steps": 4, "caption_dropout_rate": 0.3}
    train(train_values(kit, tmp_path / "a", **values), tmp_path / "ra")
    train(train_values(kit, tmp_path / "b", cache_text_encoder_outputs=True, **values), tmp_path / "rb")
    losses = [[e["value"] for e in events(tmp_path / run) if e.get("name") == "loss"] for run in ("ra", "rb")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert "cached text-encoder outputs of" in (tmp_path / "rb" / "log.txt").read_text()

    model = load_sd_model(str(kit / "model"))
    encoder = PromptEncoder(model, PromptSettings(), torch.device("cpu"))
    captions = ["", "a red circle", "a blue square"]
    cached = encoder.with_cache(captions, torch.float32, batch_size=1)
    states, pooled = encoder.encode(captions[1:2])
    cached_states, cached_pooled = cached(captions[1:2])
    assert torch.equal(states, cached_states) and torch.equal(pooled, cached_pooled)


def test_stop_then_resume_equals_an_uninterrupted_run(kit, tmp_path):
    values = {"max_train_steps": 4, "train_text_encoder": True, "learning_rate_te1": 1e-4}
    train(train_values(kit, tmp_path / "ref", **values), tmp_path / "r1")
    stopped_run = tmp_path / "r2"
    stopped_run.mkdir()
    (stopped_run / "STOP").touch()  # the loop stops after its first step
    stopped = train(train_values(kit, tmp_path / "again", **values), stopped_run, StopDuringTraining)
    assert stopped["stopped_at"] == 1
    train(train_values(kit, tmp_path / "again", resume=stopped["state"], **values), tmp_path / "r3")
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_file_has_te1_te2_names_diffusers_applies_and_resume_is_exact(kit, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    values = {"max_train_steps": 4, "save_every_n_steps": 2, "save_state": True, "train_text_encoder": True, **LORA}
    train(train_values(kit, tmp_path / "ref", **values), tmp_path / "r1")
    path = tmp_path / "ref" / "model.safetensors"
    weights = load_file(str(path))
    prefixes = {k.split("_text_model_")[0] if "_te" in k.split(".")[0] else "lora_unet" for k in weights}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    train(train_values(kit, tmp_path / "again", resume=str(tmp_path / "ref" / "model-step00000002-state"), **values),
          tmp_path / "r2")
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)

    pipe = StableDiffusionXLPipeline.from_pretrained(str(kit / "model"))
    ids = pipe.tokenizer_2(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        before = pipe.text_encoder_2(ids).text_embeds
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        after = pipe.text_encoder_2(ids).text_embeds
    assert not torch.allclose(before, after)
    assert any("lora" in name for name, _ in pipe.unet.named_modules())


def test_both_encoder_rates_zero_is_refused(kit, tmp_path):
    with pytest.raises(ConfigError, match="turn off train_text_encoder"):
        config(kit, tmp_path, train_text_encoder=True, learning_rate_te1=0, learning_rate_te2=0)
