"""Helpers shared by the trainer tests: a small run's values, running it, reading its outputs."""
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.config import TrainConfig, validate
from core.jobs.protocol import JobContext
from core.jobs.run_folder import RunFolder
from core.train import loop
from core.train.conditioning import PromptEncoder


def train_values(kit: Path, output_dir: Path, **overrides) -> dict:
    return {"pretrained_model_name_or_path": str(kit / "model"), "train_data_dir": [str(kit / "dataset")],
            "output_dir": str(output_dir), "max_resolution": "128,128", "min_bucket_reso": 64,
            "max_bucket_reso": 256, "train_batch_size": 2, "learning_rate": 1e-3, "max_train_steps": 6,
            "save_precision": "fp32", "seed": 7, **overrides}


class StopDuringTraining(JobContext):
    """A user who presses Stop once training has started: data preparation does not see it."""

    def check_stop(self) -> None:
        pass


def train(values: dict, run_dir: Path, context=JobContext) -> dict:
    try:
        with context(run_dir, echo=False) as ctx:
            return loop.run(validate(TrainConfig, values, "test"), ctx)
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)  # as accelerate's own tests do: each run picks its precision


def unet_weights(path: Path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.diffusion_model.")}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = unet_weights(a), unet_weights(b)
    assert wa.keys() == wb.keys() and wa
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def prompt_encoder(model, cfg) -> PromptEncoder:
    return PromptEncoder(model, cfg, torch.device("cpu"))


def events(run_dir: Path) -> list[dict]:
    return RunFolder(run_dir).read_events()
