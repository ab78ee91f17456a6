"""The model library: every kind of model in a person's folders is listed from headers and configs alone
(no torch, no pickle run), broken files with their reason; the remembered library folders; the CLI."""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.fsutil import REPO_ROOT
from core.models import library_folders
from core.models.library import LATENT_CACHE_SUFFIX, scan

SD1_TE = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TE = "cond_stage_model.model.token_embedding.weight"
SDXL_TE = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
VAE_KEYS = ("first_stage_model.encoder.conv_in.weight", "first_stage_model.decoder.conv_out.weight")
ATTN2 = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"


def t(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


def checkpoint_keys(te_key: str, dtype=torch.float32, in_channels: int = 4) -> dict:
    return {te_key: t(8, 4, dtype=dtype), UNET_IN: t(8, in_channels, 3, 3, dtype=dtype),
            **{key: t(2, 2, dtype=dtype) for key in VAE_KEYS}}


def lora(module: str, in_width: int, rank: int = 4) -> dict:
    return {f"{module}.lora_down.weight": t(rank, in_width), f"{module}.lora_up.weight": t(320, rank),
            f"{module}.alpha": torch.tensor(float(rank))}


def save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def by_name(entries) -> dict:
    return {e.name: e for e in entries}


def write_config(folder: Path, config: dict, *weights: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in weights:
        save(folder / name, {"w": t(2)})
    return folder


# --- single files: checkpoints, VAE, LoRA, embeddings --------------------------------------------------------

def test_checkpoints_of_each_family_are_told_apart_by_their_keys(tmp_path):
    save(tmp_path / "one.safetensors", checkpoint_keys(SD1_TE))
    save(tmp_path / "two.safetensors", checkpoint_keys(SD2_TE, torch.float16))
    (tmp_path / "two.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    save(tmp_path / "two_base.safetensors", checkpoint_keys(SD2_TE, torch.bfloat16))
    xl = checkpoint_keys(SDXL_TE, torch.float16)
    xl["conditioner.embedders.1.model.positional_embedding"] = t(2, 2)  # an fp32 tensor in an fp16 model
    save(tmp_path / "xl.safetensors", xl)
    save(tmp_path / "inpaint.safetensors", checkpoint_keys(SD1_TE, in_channels=9))
    got = {name: (e.kind, e.arch, e.precision, e.family, e.problem) for name, e in by_name(scan([tmp_path])).items()}
    assert got == {"one": ("checkpoint", "sd1", "fp32", "", ""), "two": ("checkpoint", "sd2-v", "fp16", "", ""),
                   "two_base": ("checkpoint", "sd2", "bf16", "", ""), "xl": ("checkpoint", "sdxl", "mixed", "", ""),
                   "inpaint": ("checkpoint", "sd1", "fp32", "inpaint", "")}


def test_the_demo_kits_single_files_and_diffusers_folders(demo_kit):
    kits = {arch: demo_kit(arch, num_images=1) for arch in ("sd1", "sd2v", "sdxl")}
    entries = scan(kits.values())
    found = {(Path(e.path).parent, e.format): e for e in entries}
    for arch, kit in kits.items():
        expected = {"sd1": "sd1", "sd2v": "sd2-v", "sdxl": "sdxl"}[arch]
        single, folder = found[(kit, "safetensors")], found[(kit, "diffusers")]
        assert (single.kind, single.arch, single.precision) == ("checkpoint", expected, "fp32")
        assert (folder.kind, folder.arch, folder.precision, folder.name) == ("diffusers", expected, "fp32", "model")
        assert folder.size == sum(p.stat().st_size for p in (kit / "model").rglob("*") if p.is_file())
        assert single.size == (kit / "model.safetensors").stat().st_size
        assert single.metadata["studio.demo"] == "true" and "studio.configs" not in single.metadata  # bulky
    assert len(entries) == 6  # the dataset's images and demo.json are no models


def test_vaes_single_file_and_diffusers_folder(tmp_path):
    save(tmp_path / "vae-ft-mse.safetensors", {"encoder.conv_in.weight": t(2, 2), "decoder.conv_out.weight": t(2, 2)})
    write_config(tmp_path / "sdxl-vae", {"_class_name": "AutoencoderKL", "scaling_factor": 0.13025},
                 "diffusion_pytorch_model.safetensors")
    write_config(tmp_path / "sd-vae", {"_class_name": "AutoencoderKL", "scaling_factor": 0.18215},
                 "diffusion_pytorch_model.safetensors")
    write_config(tmp_path / "unet", {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 2048},
                 "diffusion_pytorch_model.safetensors")
    got = {name: (e.kind, e.arch, e.format) for name, e in by_name(scan([tmp_path])).items()}
    assert got == {"vae-ft-mse": ("vae", "unknown", "safetensors"), "sdxl-vae": ("vae", "sdxl", "diffusers"),
                   "sd-vae": ("vae", "unknown", "diffusers"), "unet": ("unet", "sdxl", "diffusers")}


def test_loras_base_and_flavour(tmp_path):
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    save(tmp_path / "sd1.safetensors", {**lora(ATTN2, 768), **lora(te, 768)},
         {"ss_network_dim": "4", "ss_tag_frequency": json.dumps({"a": {"cat": 3}}), "ss_output_name": "x" * 500})
    save(tmp_path / "sd2.safetensors", {**lora(te, 1024)})
    save(tmp_path / "xl_te.safetensors", {**lora("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768),
                                          **lora("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280)})
    save(tmp_path / "xl_unet.safetensors", lora(ATTN2, 2048))
    save(tmp_path / "xl_meta.safetensors", lora("lora_unet_mid_block_attentions_0_proj_in", 1280),
         {"ss_base_model_version": "sdxl_base_v1-0"})
    resnet = "lora_unet_down_blocks_0_resnets_0_conv1"
    save(tmp_path / "locon.safetensors", {**lora(ATTN2, 768), f"{resnet}.lora_down.weight": t(4, 320, 3, 3),
                                          f"{resnet}.lora_up.weight": t(320, 4, 1, 1)})
    save(tmp_path / "loha.safetensors", {f"{ATTN2}.hada_w1_a": t(320, 4), f"{ATTN2}.hada_w1_b": t(4, 1024),
                                         f"{ATTN2}.hada_w2_a": t(320, 4), f"{ATTN2}.hada_w2_b": t(4, 1024),
                                         f"{ATTN2}.alpha": torch.tensor(4.0)})
    save(tmp_path / "lokr.safetensors", {f"{ATTN2}.lokr_w1": t(8, 16), f"{ATTN2}.lokr_w2": t(40, 128)})
    peft = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save(tmp_path / "diffusers_lora.safetensors", {f"{peft}.lora_A.weight": t(4, 2048),
                                                   f"{peft}.lora_B.weight": t(640, 4)})
    entries = by_name(scan([tmp_path]))
    got = {name: (e.kind, e.arch, e.family) for name, e in entries.items()}
    assert got == {"sd1": ("lora", "sd1", "lora"), "sd2": ("lora", "sd2", "lora"), "xl_te": ("lora", "sdxl", "lora"),
                   "xl_unet": ("lora", "sdxl", "lora"), "xl_meta": ("lora", "sdxl", "lora"),
                   "locon": ("lora", "sd1", "locon"), "loha": ("lora", "sd2", "loha"),
                   "lokr": ("lora", "sdxl", "lokr"), "diffusers_lora": ("lora", "sdxl", "lora")}
    metadata = entries["sd1"].metadata
    assert metadata["ss_network_dim"] == "4" and "ss_tag_frequency" not in metadata
    assert len(metadata["ss_output_name"]) == 200 and metadata["ss_output_name"].endswith("…")


def test_embeddings(tmp_path):
    torch.save({"string_to_param": {"*": t(2, 768)}, "name": "cat", "step": 100}, tmp_path / "a1111.pt")
    save(tmp_path / "sd2.safetensors", {"emb_params": t(2, 1024)})
    save(tmp_path / "xl.safetensors", {"clip_l": t(2, 768), "clip_g": t(2, 1280)})
    got = {name: (e.kind, e.arch, e.format) for name, e in by_name(scan([tmp_path])).items()}
    assert got == {"a1111": ("embedding", "sd1", "pickle"), "sd2": ("embedding", "sd2", "safetensors"),
                   "xl": ("embedding", "sdxl", "safetensors")}


def test_ckpt_files_are_read_without_torch_load(tmp_path):
    weights = checkpoint_keys(SD1_TE, torch.float16)
    torch.save({"state_dict": weights, "global_step": 5}, tmp_path / "zip.ckpt")
    torch.save(checkpoint_keys(SDXL_TE, torch.bfloat16), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"a": t(2, dtype=torch.float8_e4m3fn), "b": torch.nn.Parameter(t(2))}, tmp_path / "fp8.pth")
    torch.save(lora(ATTN2, 768), tmp_path / "pytorch_lora_weights.bin")
    (tmp_path / "random.bin").write_bytes(b"\x01\x02 not a checkpoint")
    got = {name: (e.kind, e.arch, e.precision, e.format, e.problem) for name, e in by_name(scan([tmp_path])).items()}
    assert got == {"zip": ("checkpoint", "sd1", "fp16", "pickle", ""),
                   "legacy": ("checkpoint", "sdxl", "bf16", "pickle", ""),
                   "fp8": ("unknown", "unknown", "mixed", "pickle", ""),
                   "pytorch_lora_weights": ("lora", "sd1", "fp32", "pickle", "")}  # random.bin is no model


# --- folders: taggers, captioners, text encoders -------------------------------------------------------------

def test_tagger_and_transformers_folders(tmp_path):
    tagger = tmp_path / "wd-v1-4-vit-tagger-v2"
    tagger.mkdir()
    (tagger / "model.onnx").write_bytes(b"\x08\x07onnx")
    (tagger / "selected_tags.csv").write_text("tag_id,name,category,count\n1,cat,0,10\n")
    (tagger / "config.json").write_text('{"architecture": "vit_base_patch16_224"}')  # timm's, as on the Hub
    write_config(tmp_path / "blip", {"model_type": "blip", "architectures": ["BlipForConditionalGeneration"]},
                 "model.safetensors")
    write_config(tmp_path / "qwen", {"model_type": "qwen2_5_vl"}, "model-00001-of-00002.safetensors")
    write_config(tmp_path / "florence", {"model_type": "florence2_language",
                                         "architectures": ["Florence2ForConditionalGeneration"]}, "model.safetensors")
    write_config(tmp_path / "llava", {"model_type": "llava_next"}, "model.safetensors")
    write_config(tmp_path / "te", {"model_type": "clip_text_model", "hidden_size": 1024}, "model.safetensors")
    write_config(tmp_path / "clip", {"model_type": "clip"}, "model.safetensors")
    write_config(tmp_path / "blip2-no-weights", {"model_type": "blip-2"})
    write_config(tmp_path / "bert", {"model_type": "bert"}, "model.safetensors")
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "config.json").write_text('{"theme": "dark"}')  # an app's config: not a model
    got = {name: (e.kind, e.arch, e.family, e.format, e.problem) for name, e in by_name(scan([tmp_path])).items()}
    assert got == {
        "wd-v1-4-vit-tagger-v2": ("tagger", "unknown", "wd14", "onnx", ""),
        "blip": ("captioner", "unknown", "blip", "transformers", ""),
        "qwen": ("captioner", "unknown", "qwen2.5-vl", "transformers", ""),
        "florence": ("captioner", "unknown", "florence2", "transformers", ""),
        "llava": ("captioner", "unknown", "llava", "transformers", ""),
        "te": ("text_encoder", "sd2", "", "transformers", ""),
        "clip": ("clip", "unknown", "", "transformers", ""),
        "blip2-no-weights": ("captioner", "unknown", "blip-2", "transformers",
                             "no weights in this folder (config.json alone)"),
        "bert": ("unknown", "unknown", "bert", "transformers", "")}


def test_a_diffusers_folder_with_a_broken_weight_file_says_which(tmp_path, demo_kit):
    import shutil

    folder = shutil.copytree(demo_kit("sd1", num_images=1) / "model", tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (entry,) = scan([folder])
    assert entry.kind == "diffusers" and entry.arch == "sd1"
    assert entry.problem.startswith("unet/diffusion_pytorch_model.safetensors: truncated file")


# --- broken files are listed with the reason, never raised ---------------------------------------------------

class Payload:
    """A pickled object that runs a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_broken_files_are_listed_with_their_reason(tmp_path):
    whole = save(tmp_path / "whole.safetensors", checkpoint_keys(SD1_TE))
    (tmp_path / "truncated.safetensors").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (tmp_path / "text.safetensors").write_text("this is a text file, not a model\n")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "empty-ckpt.ckpt").write_bytes(b"")
    (tmp_path / "header-cut.safetensors").write_bytes(struct.pack("<Q", 5000) + b'{"a": ')
    (tmp_path / "not-a-table.safetensors").write_bytes(struct.pack("<Q", 2) + b"[]")
    torch.save(checkpoint_keys(SD1_TE), tmp_path / "cut.ckpt")
    data = (tmp_path / "cut.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "words.ckpt").write_text("hello")
    problems = {name: e.problem for name, e in by_name(scan([tmp_path])).items()}
    assert problems.pop("whole") == ""
    assert problems["truncated"].startswith("truncated file: the header says ")
    assert problems["text"].startswith("not a safetensors file")
    assert problems["empty"] == problems["empty-ckpt"] == "an empty file"
    assert problems["header-cut"] == "truncated file: the header alone takes 4.9 KiB, the file has 14 bytes"
    assert problems["not-a-table"] == "not a safetensors file: the header is not a table of tensors"
    assert problems["cut"].startswith("a damaged or truncated zip file")
    assert problems["words"] == "not a PyTorch checkpoint (neither a zip file nor a pickle)"
    assert len(problems) == 8


def test_a_header_claiming_10_gb_is_refused_by_the_limit_unread(tmp_path):
    path = tmp_path / "huge-header.safetensors"
    path.write_bytes(struct.pack("<Q", 10 * 10**9) + b'{"a": {"dtype": "F16"')
    (entry,) = scan([path])
    assert entry.kind == "unknown" and entry.size == 29
    assert entry.problem == "not a safetensors file: its first bytes give a header of 9.3 GiB, over the 100.0 MiB " \
                            "limit, not read"


def test_code_in_a_pickle_is_reported_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "plain.ckpt", "wb") as f:
        pickle.dump({"state_dict": {"x": Payload(marker)}}, f, protocol=2)
    torch.save({"epoch": 1, "callback": Payload(marker)}, tmp_path / "zipped.ckpt")  # torch's zip format
    entries = by_name(scan([tmp_path]))
    system = f"{os.system.__module__}.system"  # posix.system (nt.system on Windows)
    assert entries["plain"].problem == entries["zipped"].problem == f"pickle imports {system}: not loaded"
    assert not marker.exists()
    with zipfile.ZipFile(tmp_path / "zipped.ckpt") as archive:  # the payload is real: the real pickle runs it
        pickle.loads(archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl"))))
    assert marker.exists()


# --- the walk ------------------------------------------------------------------------------------------------

def test_the_walk_skips_hidden_state_cache_and_run_folders_and_stops_at_the_depth(tmp_path, studio_home):
    one = checkpoint_keys(SD1_TE)
    save(tmp_path / "a" / "b" / "c" / "d" / "deep.safetensors", one)  # 4 folders down: listed
    save(tmp_path / "a" / "b" / "c" / "d" / "e" / "too-deep.safetensors", one)
    save(tmp_path / ".hidden" / "hidden.safetensors", one)
    save(tmp_path / "out" / "my-lora-step00000100-state" / "model.safetensors", one)
    save(tmp_path / "data" / f"img{LATENT_CACHE_SUFFIX}", {"latents": t(4, 8, 8)})
    save(studio_home / "runs" / "train-x" / "ckpt.safetensors", one)
    save(studio_home / "models" / "kept.safetensors", one)
    (tmp_path / "loop").symlink_to(tmp_path)  # a link back up: visited once
    names = sorted(e.name for e in scan([tmp_path, studio_home, tmp_path / "a"]))
    assert names == ["deep", "kept"]


def test_the_latent_cache_suffix_is_the_cache_jobs():
    from core.dataset.latents import CACHE_SUFFIX

    assert LATENT_CACHE_SUFFIX == CACHE_SUFFIX


def test_only_headers_are_read(tmp_path):
    """A hundred checkpoints that each say they hold 1 GB (sparse files) list with next to no reading."""
    io_file = Path("/proc/self/io")
    if not io_file.exists():
        pytest.skip("needs /proc/self/io (Linux)")
    header = {SD1_TE: {"dtype": "F16", "shape": [250_000_000, 2], "data_offsets": [0, 10**9]},
              UNET_IN: {"dtype": "F16", "shape": [1], "data_offsets": [10**9, 10**9]}}
    text = json.dumps(header).encode()
    for i in range(100):
        with open(tmp_path / f"model{i:03d}.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(8 + len(text) + 10**9)

    def bytes_read() -> int:
        return int(dict(line.split(": ") for line in io_file.read_text().splitlines())["rchar"])

    before = bytes_read()
    entries = scan([tmp_path])
    assert bytes_read() - before < 5 * 2**20
    assert len(entries) == 100 and all(e.kind == "checkpoint" and not e.problem for e in entries)


def test_the_scan_never_imports_torch(tmp_path):
    save(tmp_path / "x.safetensors", checkpoint_keys(SDXL_TE))
    torch.save({"state_dict": checkpoint_keys(SD1_TE)}, tmp_path / "y.ckpt")
    write_config(tmp_path / "blip", {"model_type": "blip"}, "model.safetensors")
    code = ("import sys, core.models.library as library\n"
            f"entries = library.scan([{str(tmp_path)!r}])\n"
            "assert [e.arch for e in entries] == ['unknown', 'sdxl', 'sd1'], entries\n"
            "assert 'torch' not in sys.modules and 'safetensors' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, capture_output=True, text=True)


# --- the remembered folders and the command line -------------------------------------------------------------

def test_library_folders_are_remembered(tmp_path, studio_home):
    own = str(studio_home / "models")
    assert library_folders.folders() == [own]
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    assert library_folders.add_folder(f'  "{first}" ') == [str(first)]
    assert library_folders.add_folder(second) == [str(second)]
    assert library_folders.add_folder(first) == [] and library_folders.add_folder(own) == []
    assert library_folders.folders() == [own, str(first), str(second)]
    saved = json.loads((studio_home / "model_library.json").read_text())
    assert saved == {"folders": [str(first), str(second)]}
    library_folders.remove_folder(first)
    assert library_folders.folders() == [own, str(second)]
    with pytest.raises(ValueError, match="always in the library"):
        library_folders.remove_folder(own)
    with pytest.raises(ValueError, match="not found"):
        library_folders.add_folder(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        library_folders.add_folder(tmp_path / "file.txt")


def test_an_unreadable_library_file_is_kept_aside(tmp_path, studio_home):
    (studio_home / "model_library.json").write_text("{broken")
    assert library_folders.folders() == [str(studio_home / "models")]
    assert "could not read" in library_folders.added_folders()[1]
    library_folders.add_folder(tmp_path)
    assert library_folders.folders()[1:] == [str(tmp_path)]
    assert [p.read_text() for p in studio_home.glob("model_library.json.bad-*")] == ["{broken"]


def make_folders(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
    return root


def test_an_install_root_adds_its_model_folders(tmp_path):
    a1111 = make_folders(tmp_path / "webui", "models/Stable-diffusion", "models/Lora", "models/VAE", "embeddings",
                         "extensions", "venv")
    expected = [str(a1111 / "models" / name) for name in ("Stable-diffusion", "Lora", "VAE")]
    assert library_folders.add_folder(a1111) == [*expected, str(a1111 / "embeddings")]
    portable = make_folders(tmp_path / "ComfyUI_windows_portable", "ComfyUI/models/checkpoints",
                            "ComfyUI/models/loras", "ComfyUI/models/vae", "ComfyUI/models/upscale_models")
    models = portable / "ComfyUI" / "models"
    assert library_folders.add_folder(portable) == [str(models / n) for n in ("checkpoints", "loras", "vae")]
    forge_models = make_folders(tmp_path / "forge", "models/Stable-diffusion", "models/Lora") / "models"
    assert library_folders.add_folder(forge_models) == [str(forge_models / n) for n in ("Stable-diffusion", "Lora")]
    mine = make_folders(tmp_path / "my-training", "checkpoints")  # a folder that happens to hold checkpoints/
    assert library_folders.add_folder(mine) == [str(mine)]
    assert len(library_folders.folders()) == 1 + 4 + 3 + 2 + 1


def test_the_models_command_prints_one_json_document(tmp_path, studio_home):
    save(tmp_path / "a" / "one.safetensors", checkpoint_keys(SD1_TE))
    save(tmp_path / "b" / "lora.safetensors", lora(ATTN2, 2048))
    (tmp_path / "b" / "broken.safetensors").write_text("not a model at all")
    env = {**os.environ, "STUDIO_HOME": str(studio_home)}

    def models(*args: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "core", "models", *args], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, check=True)
        return json.loads(result.stdout)

    report = models("--scan", str(tmp_path / "a"), "--scan", str(tmp_path / "b"), "--scan", str(tmp_path / "gone"))
    assert [(m["name"], m["kind"], m["arch"]) for m in report["models"]] == [
        ("one", "checkpoint", "sd1"), ("broken", "unknown", "unknown"), ("lora", "lora", "sdxl")]
    assert report["models"][1]["problem"].startswith("not a safetensors file")
    assert set(report["models"][0]) == {"path", "name", "kind", "arch", "family", "format", "size", "precision",
                                        "metadata", "problem"}
    assert [f["problem"] for f in report["folders"]] == ["", "", f"not found: {tmp_path / 'gone'}"]
    save(studio_home / "models" / "checkpoints" / "mine.safetensors", checkpoint_keys(SDXL_TE))
    library_folders.add_folder(tmp_path / "a")
    report = models()
    assert [f["path"] for f in report["folders"]] == [str(studio_home / "models"), str(tmp_path / "a")]
    assert [m["name"] for m in report["models"]] == ["mine", "one"]
