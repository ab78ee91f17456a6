"""LyCORIS networks (network_module lycoris.kohya) on the tiny demo models: each algorithm (LoCon, LoHa, LoKr,
(IA)^3, DoRA) trains for SD 1.x and SDXL, is saved by the LyCORIS library in its file layout with the training
metadata, loads back into the library, merges (our merge, the Tools tab's job) into the weights the forward
pass with the network computes, and changes the model's output; resume is exact; bad network_args are
refused with a message that names them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_lora_merge import model_parts, te_outs, unet_out
from trainkit import train, train_values

from core.config import ConfigError, MergeLoraConfig, TrainConfig, validate
from core.config.schema import field_meta
from core.jobs.protocol import JobContext
from core.models import lycoris_net
from core.models.library import file_entry
from core.models.lora_merge import run as run_merge
from core.models.sd import load_sd_model

LYCORIS = {"train_lora": True, "network_module": "lycoris.kohya", "network_dim": 4, "network_alpha": 2.0,
           "learning_rate": 1e-2, "train_batch_size": 1, "train_text_encoder": True}
# name -> (settings, a tensor name only that algorithm's modules have)
ALGORITHMS = {
    "locon": ({"algo": "locon", "conv_dim": 2, "conv_alpha": 1.0}, "lora_down.weight"),
    "loha": ({"algo": "loha"}, "hada_w1_a"),
    "lokr": ({"algo": "lokr", "factor": 4}, "lokr_w1"),
    "ia3": ({"algo": "ia3", "learning_rate": 5e-2}, "on_input"),
    "dora": ({"algo": "locon", "dora_wd": True}, "dora_scale"),
}
MODULE_CLASS = {"locon": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule", "ia3": "IA3Module",
                "dora": "LoConModule"}


@pytest.fixture(scope="module")
def kits(demo_kit):
    return {"sd1": demo_kit("sd1", 4, 0), "sdxl": demo_kit("sdxl", 4, 0)}


@pytest.fixture(scope="module")
def trained(kits, tmp_path_factory):
    """`trained(arch, name)`: the file of a 2-step run of that algorithm (each run made once)."""
    files = {}

    def get(arch: str, name: str):
        if (arch, name) not in files:
            folder = tmp_path_factory.mktemp(f"lycoris-{arch}-{name}")
            result = train(train_values(kits[arch], folder / "out", max_train_steps=2,
                                        **{**LYCORIS, **ALGORITHMS[name][0]}), folder / "run")
            files[arch, name] = result["model"]
        return files[arch, name]

    return get


def outputs(model) -> list[torch.Tensor]:
    """The U-Net's and the text encoders' outputs for fixed inputs."""
    return [unet_out(model.unet), *te_outs(model)]


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def changed(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[bool]:
    return [not torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b)]


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_each_algorithm_trains_saves_loads_and_merges(kits, trained, arch, name):
    from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

    path = trained(arch, name)
    weights = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    prefixes = ("lora_unet_", "lora_te1_", "lora_te2_") if arch == "sdxl" else ("lora_unet_", "lora_te_")
    assert weights and all(key.startswith(prefixes) for key in weights)
    assert all(any(key.startswith(p) for key in weights) for p in prefixes)  # every part trained, te1 and te2 apart
    assert any(key.startswith("lora_te") and "_text_model_encoder_layers_" in key for key in weights)  # A1111 names
    assert any(key.endswith("." + ALGORITHMS[name][1]) for key in weights)
    assert metadata["ss_network_module"] == "lycoris.kohya" and metadata["ss_training_steps"] == "2"
    assert json.loads(metadata["ss_network_args"])["algo"] == ALGORITHMS[name][0]["algo"]
    assert metadata["sshs_model_hash"]  # written by the library's save_weights
    entry = file_entry(Path(path))  # the Models tab lists it as a LoRA of its base and algorithm
    assert (entry.kind, entry.arch, entry.family) == ("lora", arch, "locon" if name == "dora" else name)

    base = load_sd_model(str(kits[arch] / "model"))
    before = outputs(base)
    # the library's own loader: one module per name, of the algorithm's class. lycoris-lora 4.1.3's loader
    # cannot rebuild (IA)^3 modules (its IA3Module.make_module_from_state_dict takes no on_input), which
    # lycoris_net.load_modules makes as that function would.
    if name == "ia3":
        modules = lycoris_net.load_modules(model_parts(base), weights)
    else:
        LycorisNetworkKohya.apply_preset(lycoris_net.NO_TARGETS)  # the loader first builds a network it drops
        network, _ = create_network_from_weights(1.0, path, None, lycoris_net.text_encoder_arg(model_parts(base)),
                                                 base.unet)
        modules = network.unet_loras + network.text_encoder_loras
    assert len(modules) == len({key.split(".")[0] for key in weights})
    assert {type(m).__name__ for m in modules} == {MODULE_CLASS[name]}
    for module in modules:
        module.apply_to()
    with_network = outputs(base)
    assert all(changed(before, with_network))  # trained: every algorithm's update starts at zero

    merged = load_sd_model(str(kits[arch] / "model"))
    assert len(lycoris_net.merge_lycoris_into(model_parts(merged), weights)) == len(modules)
    assert_close(outputs(merged), with_network)  # merged weights compute what the network computes


def test_the_tools_tab_merge_takes_a_lycoris_file_at_its_ratio(kits, trained, tmp_path):
    path = trained("sdxl", "loha")
    base = kits["sdxl"] / "model"
    values = {"pretrained_model_name_or_path": str(base), "lora_models": [path], "output_dir": str(tmp_path / "out"),
              "output_name": "merged", "save_precision": "fp32", "ratios": [0.5]}
    with JobContext(tmp_path / "run", echo=False) as ctx:
        result = run_merge(validate(MergeLoraConfig, values, "test"), ctx)
    assert result["merged"][0]["modules"] == len({key.split(".")[0] for key in load_file(path)})
    half = load_sd_model(str(base))
    lycoris_net.merge_lycoris_into(model_parts(half), load_file(path), 0.5)
    assert_close(outputs(load_sd_model(result["model"])), outputs(half))
    assert all(changed(outputs(load_sd_model(str(base))), outputs(half)))


def test_lycoris_resume_equals_an_uninterrupted_run(kits, tmp_path):
    values = {**LYCORIS, "algo": "lokr", "factor": 4, "dora_wd": True, "max_train_steps": 4, "save_every_n_steps": 2,
              "save_state": True}
    train(train_values(kits["sd1"], tmp_path / "ref", **values), tmp_path / "r1")
    train(train_values(kits["sd1"], tmp_path / "again", resume=str(tmp_path / "ref" / "model-step00000002-state"),
                       **values), tmp_path / "r2")
    a, b = (load_file(str(tmp_path / folder / "model.safetensors")) for folder in ("ref", "again"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    step2 = load_file(str(tmp_path / "ref" / "model-step00000002.safetensors"))
    assert not all(torch.equal(a[k], step2[k]) for k in a)  # the resumed steps trained


@pytest.mark.parametrize("overrides, message", [
    ({"network_args": ["foo=1"]}, "unknown LyCORIS argument 'foo'; known: preset, rank_dropout"),
    ({"network_args": ["algo=lokr"]}, "algo has its own setting here: set algo instead of network_args"),
    ({"network_args": ["dropout=0.1"]}, "set network_dropout instead"),
    ({"network_args": ["rank_dropout=1.5"]}, "rank_dropout=1.5: expected a number from 0 to below 1"),
    ({"network_args": ["use_tucker=maybe"]}, "use_tucker=maybe: expected true or false"),
    ({"network_args": ["preset=everything"]}, "preset=everything: expected one of full, full-lin"),
    ({"network_args": ["preset=/no/such/preset.toml"]}, "no such preset file"),
    ({"network_args": ["rank_dropout"]}, "'rank_dropout' is not key=value"),
    ({"network_args": ["use_tucker=true"], "algo": "lokr"}, "use_tucker cannot be used with algo lokr"),
    ({"algo": "boft"}, "Input should be 'locon', 'loha', 'lokr' or 'ia3'"),
    ({"factor": 0}, "factor 0 is no Kronecker factor"),
    ({"block_dims": "2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2"}, "apply to network_module networks.lora"),
])
def test_bad_lycoris_settings_are_refused_naming_them(kits, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrainConfig, train_values(kits["sd1"], tmp_path / "out", **{**LYCORIS, **overrides}), "test")


def test_lycoris_settings_are_in_the_lora_section_where_they_apply():
    values = {"train_lora": True, "network_module": "lycoris.kohya", "algo": "lokr"}
    for name in ("network_module", "algo", "conv_dim", "conv_alpha", "factor", "dora_wd", "network_args"):
        meta = field_meta(TrainConfig, name)
        assert meta["group"] == "LoRA" and meta["label"]
        assert all(condition.holds(values) for condition in meta["applies"])
    ia3, lora = {**values, "algo": "ia3"}, {**values, "network_module": "networks.lora"}
    assert not all(c.holds(ia3) for c in field_meta(TrainConfig, "dora_wd")["applies"])
    assert not all(c.holds(lora) for c in field_meta(TrainConfig, "algo")["applies"])
    assert not all(c.holds(values) for c in field_meta(TrainConfig, "lora_targets")["applies"])
