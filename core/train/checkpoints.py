"""Where a run's model saves and resumable states go, when they are made, which are kept."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from core.fsutil import atomic_write_json, disk_full_error, fitting_name, is_disk_full, swap_in_folder

STATE_FILE = "training_state.json"
EMA_SUFFIX = "-ema"    # the EMA weights saved alongside the raw ones: model-ema, model-step00000100-ema
BEST_SUFFIX = "-best"  # the model with the lowest validation loss (auto_stop)
PARTIAL_SUFFIX = ".partial"  # of a state folder being written (save_state)


@dataclass
class Position:
    """Where training is: what a resumed run needs besides the accelerate state."""
    global_step: int = 0   # optimizer updates done
    epoch: int = 0         # epoch in progress
    batch_in_epoch: int = 0  # batches of that epoch already consumed


def model_path(output_dir: str, output_name: str, save_as: str, suffix: str = "") -> Path:
    """`<output_dir>/<output_name><suffix>.safetensors`, or a folder for diffusers."""
    name = f"{output_name}{suffix}"
    return Path(output_dir) / (name if save_as == "diffusers" else f"{name}.safetensors")


def model_file(cfg, suffix: str = "") -> Path:
    """Where a save of the run `cfg` (a TrainConfig) goes: the model (file or diffusers folder), or
    the LoRA file (always a .safetensors file)."""
    return model_path(cfg.output_dir, cfg.output_name, "safetensors" if cfg.train_lora else cfg.save_model_as, suffix)


def step_suffix(step: int) -> str:
    return f"-step{step:08d}"


def epoch_suffix(epoch: int) -> str:
    return f"-e{epoch:06d}"


def state_dir(output_dir: str, output_name: str, step: int) -> Path:
    return Path(output_dir) / f"{output_name}{step_suffix(step)}-state"


def is_due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def numbered_saves(output_dir: str, output_name: str, kind: str) -> dict[int, list[Path]]:
    """The step (`kind` "step") or epoch ("epoch") saves of `output_name` in `output_dir` by number: models,
    their EMA saves and states, finished or partial."""
    tag = r"-step(\d{8})" if kind == "step" else r"-e(\d{6})"
    pattern = re.compile(re.escape(output_name) + tag
                         + rf"({EMA_SUFFIX})?(\.safetensors|-state({re.escape(PARTIAL_SUFFIX)})?)?$")
    saves: dict[int, list[Path]] = {}
    folder = Path(output_dir)
    for path in folder.iterdir() if folder.is_dir() else []:
        match = pattern.match(path.name)
        if match:
            saves.setdefault(int(match.group(1)), []).append(path)
    return saves


def prune(output_dir: str, output_name: str, kind: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step or epoch saves (with their EMA saves and states); 0 keeps all."""
    if keep <= 0:
        return []
    saves = numbered_saves(output_dir, output_name, kind)
    removed = []
    for number in sorted(saves)[:-keep]:
        for path in saves[number]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
    return removed


def save_state(accelerator, folder: Path, position: Position) -> Path:
    """accelerate's state (model, optimizer, scheduler, scaler, RNG) plus our position, atomically:
    written beside `folder` and renamed into place, so a crash never leaves half a state, and a full
    drive leaves neither half a state nor the space it took (core.fsutil.disk_full_error)."""
    folder = Path(folder)
    temp = fitting_name(folder, after=PARTIAL_SUFFIX)
    if accelerator.is_main_process and temp.exists():
        shutil.rmtree(temp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temp))
        if accelerator.is_main_process:
            atomic_write_json(temp / STATE_FILE, asdict(position))
            swap_in_folder(temp, folder)
    except BaseException as exc:
        full = is_disk_full(exc, temp)
        if accelerator.is_main_process:
            shutil.rmtree(temp, ignore_errors=True)
        if full:
            raise disk_full_error(folder, exc, state_bytes(accelerator)) from exc
        raise
    accelerator.wait_for_everyone()
    return folder


def state_bytes(accelerator) -> int:
    """About how many bytes accelerate's state of the prepared models, optimizers and the objects registered
    for checkpointing (the EMA weights) takes."""
    import torch

    from core.models.single_file import saved_bytes

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from tensors(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from tensors(item)

    parts = [model.state_dict() for model in accelerator._models]
    parts += [optimizer.state_dict() for optimizer in accelerator._optimizers]
    parts += [obj.state_dict() for obj in accelerator._custom_objects]
    return saved_bytes(tensors(parts))


def load_position(folder: Path) -> Position:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"resume: {folder} is not a saved training state (no {STATE_FILE}); "
                         "choose a folder named like '<output_name>-step00000100-state'")
    try:
        return Position(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, OSError) as exc:
        raise ValueError(f"resume: {path} cannot be read ({exc}): choose another saved training state") from None


def check_state_files(folder: Path) -> None:
    """Refuse a state whose pickles name more than tensors and plain data (accelerate loads them with
    weights_only=False: a crafted file in a shared folder would run code). Only each pickle's object
    list is read, not its tensors (an optimizer state can be gigabytes); numpy arrays are allowed
    (the saved random states hold some)."""
    import numpy as np
    import torch

    allowed = {f"{obj.__module__}.{obj.__qualname__}" for obj in (
        np.ndarray, np.dtype, np._core.multiarray._reconstruct,
        *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"})}  # numpy.dtypes.*DType
    for path in sorted(Path(folder).iterdir()):
        if path.suffix not in (".pkl", ".bin", ".pt", ".pth"):
            continue
        try:
            unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
        except Exception as err:  # not a torch.save zip file, or a damaged one
            unsafe = [str(err).split("\n")[0][:200]]
        if unsafe:
            raise ValueError(f"resume: {path} holds Python objects besides tensors or is damaged "
                             f"({', '.join(unsafe)}); a state like this could run code when loaded, so it is "
                             "refused. Resume only from states this program saved.")


def saved_states(output_dir: str, output_name: str) -> list[Path]:
    """The resumable states of `output_name` in `output_dir`, newest step first."""
    pattern = re.compile(re.escape(output_name) + r"-step(\d{8})-state$")
    folder = Path(output_dir)
    found = [(int(m.group(1)), path) for path in (folder.iterdir() if folder.is_dir() else [])
             if (m := pattern.match(path.name)) and (path / STATE_FILE).is_file()]
    return [path for _, path in sorted(found, reverse=True)]
