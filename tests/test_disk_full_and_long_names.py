"""Nothing the user owns is lost on a real full drive (a small tmpfs) or with long file names: a model
(single file, diffusers folder), a training state and the latent cache fail on a full drive with one
line naming the file and the space, leave no partial files, and keep the earlier version byte for byte;
files whose names come close to the 255-byte limit are written atomically, cached and cleaned."""
from __future__ import annotations

import errno
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from core.fsutil import (
    NAME_MAX,
    atomic_path,
    atomic_write_text,
    fitting_name,
    is_disk_full,
    remove_stale_temps,
    staging_folder,
    swap_in_folder,
    temp_file_prefix,
)

LONG_STEM = "a-long-caption-name-" + "x" * 230  # 250 bytes: legal on Linux and NTFS


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 4, 0)


@pytest.fixture(scope="module")
def model(kit):
    from core.models.sd import load_sd_model

    return load_sd_model(str(kit / "model"))


def fill(drive: Path, leave: int = 0) -> None:
    """Take all the drive's free space but about `leave` bytes."""
    with open(drive / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(shutil.disk_usage(drive).free - leave, 0))
            f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def assert_one_clear_line(error: pytest.ExceptionInfo, path: Path, *library_errors: str) -> None:
    """The error names the file, the space it needs (more than is free) and the space free, says nothing
    was replaced, and came from one of the libraries' own exceptions (not one a test made up)."""
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC and "\n" not in message, message
    space = re.search(rf"^\[Errno 28\] cannot write {re.escape(str(path))}: No space left on device \(it needs "
                      r"about ([\d.]+) (\w+), ([\d.]+) (\w+) free on that drive\); nothing was replaced \(free "
                      r"some space, or choose another folder, and try again\)$", message)
    assert space, message
    needed, free = (float(space[i]) * UNITS[space[i + 1]] for i in (1, 3))
    assert needed > free, message
    causes, cause = [], error.value
    while cause is not None:
        causes.append(type(cause).__name__)
        cause = cause.__cause__
    assert set(library_errors) & set(causes), causes


@pytest.mark.parametrize("save_as, megabytes", [("safetensors", 8), ("diffusers", 16)])
def test_a_model_save_on_a_full_drive_keeps_the_earlier_save(model, small_tmpfs, save_as, megabytes):
    from core.models.sd import load_sd_model, save_sd_model

    drive = small_tmpfs(megabytes)
    path = save_sd_model(model, drive / ("model.safetensors" if save_as == "safetensors" else "model"),
                         save_as, "fp16")
    before = contents(drive)
    with pytest.raises(OSError) as failure:  # a second save needs as much again: more than is left
        save_sd_model(model, path, save_as, "fp16")
    # a SafetensorError from the weights, or from the tokenizers library (a plain Exception) its tokenizer.json
    assert_one_clear_line(failure, path, "SafetensorError", *(["Exception"] if save_as == "diffusers" else []))
    assert contents(drive) == before  # no partial file or folder, the earlier save byte for byte
    assert load_sd_model(str(path)).arch == "sd1"


@pytest.mark.parametrize("free_mib, library_error", [(0.5, "SafetensorError"), (1.5, "RuntimeError")])
def test_a_training_state_on_a_full_drive_keeps_the_earlier_state(small_tmpfs, free_mib, library_error):
    """With 0.5 MiB left the model weights (1 MiB, safetensors) do not fit; with 1.5 MiB they do and the
    optimizer state (2 MiB, torch.save: "unexpected pos") does not."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from core.train.checkpoints import Position, save_state, state_dir

    drive = small_tmpfs(8)
    accelerator = Accelerator(cpu=True)
    try:
        net = torch.nn.Linear(512, 512, bias=False)  # 1 MiB of weights, 2 MiB of AdamW state
        net, optimizer = accelerator.prepare(net, torch.optim.AdamW(net.parameters()))
        net(torch.ones(1, 512)).sum().backward()
        optimizer.step()
        folder = state_dir(str(drive), "model", 2)
        save_state(accelerator, folder, Position(global_step=2))
        before = contents(drive)
        fill(drive, leave=int(free_mib * 2**20))
        before["filler"] = (drive / "filler").read_bytes()
        with pytest.raises(OSError) as failure:
            save_state(accelerator, folder, Position(global_step=2, epoch=1))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert_one_clear_line(failure, folder, library_error)
    assert contents(drive) == before  # no .partial folder left to keep the drive full


def test_the_latent_cache_on_a_full_drive_stops_with_one_clear_line(kit, copy_dataset, small_tmpfs, tmp_path):
    from core.config import CacheConfig
    from core.dataset.latents import run
    from core.jobs.protocol import JobContext

    drive = small_tmpfs(1)
    cfg = CacheConfig(train_data_dir=[str(copy_dataset(kit))], pretrained_model_name_or_path=str(kit / "model"),
                      latents_dir=str(drive), max_resolution="128,128", min_bucket_reso=64, max_bucket_reso=256,
                      bucket_reso_steps=64, vae_batch_size=2, max_data_loader_n_workers=1)
    with JobContext(tmp_path / "first", echo=False) as ctx:
        assert run(cfg, ctx)["encoded"] == 4
    before = contents(drive)
    fill(drive)
    before["filler"] = (drive / "filler").read_bytes()
    flipped = cfg.model_copy(update={"flip_aug": True})  # every file is stale: rebuilt with flipped latents
    with JobContext(tmp_path / "second", echo=False) as ctx, pytest.raises(OSError) as failure:
        run(flipped, ctx)
    written = Path(str(failure.value).split("cannot write ")[1].split(": ")[0])
    assert written.parent == drive and written.name in before
    assert_one_clear_line(failure, written, "SafetensorError")
    assert contents(drive) == before


def test_presets_captions_and_run_files_on_a_full_drive_keep_their_earlier_version(small_tmpfs, monkeypatch):
    """The small writers (a preset, a caption, a run folder's json) share atomic_write_*: same line, same care."""
    from core.config.presets import save_preset
    from core.jobs.run_folder import RunFolder

    drive = small_tmpfs(1)
    monkeypatch.setenv("STUDIO_USER_PRESETS", str(drive / "presets"))
    preset = save_preset("scan", "My Scan", {"train_data_dir": ["/data/a"]})
    caption = drive / "img.txt"
    atomic_write_text(caption, "a cat")
    run = RunFolder(drive / "run")
    run.update_status(state="running")
    before = contents(drive)
    fill(drive)
    before["filler"] = (drive / "filler").read_bytes()
    long_text = "x" * 2**16  # more than the page or two a drive may still find for a small file
    writes = {preset: lambda: save_preset("scan", "My Scan", {"train_data_dir": ["/data/" + long_text]},
                                          overwrite=True),
              caption: lambda: atomic_write_text(caption, long_text),
              run.status_file: lambda: run.update_status(state="failed", note=long_text)}
    for path, write in writes.items():
        with pytest.raises(OSError) as failure:
            write()
        assert_one_clear_line(failure, path, "OSError")
    assert contents(drive) == before


def test_is_disk_full_knows_the_libraries_errors_and_nothing_else(tmp_path):
    safetensors_error = type("SafetensorError", (Exception,), {})
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert is_disk_full(OSError(errno.EFBIG, "File too large"), tmp_path)
    assert is_disk_full(safetensors_error("Error while serializing: I/O error: No space left on device "
                                          "(os error 28)"), tmp_path)
    assert not is_disk_full(safetensors_error("Error while serializing: I/O error: Permission denied "
                                              "(os error 13)"), tmp_path)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path)
    # torch's short write says only "unexpected pos": a full disk only where the drive is (nearly) full
    assert not is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
                            tmp_path)
    assert not is_disk_full(KeyboardInterrupt(), tmp_path)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_file_with_a_250_byte_stem_is_written_atomically_and_its_leftovers_found(tmp_path):
    caption = tmp_path / f"{LONG_STEM}.txt"
    atomic_write_text(caption, "first")
    atomic_write_text(caption, "second")
    assert caption.read_text() == "second" and hidden(tmp_path) == []

    with pytest.raises(RuntimeError), atomic_path(caption) as tmp:  # a writer that dies mid-write ...
        temp_name = tmp.name
        raise RuntimeError("killed")
    assert len(os.fsencode(temp_name)) <= NAME_MAX and temp_name.startswith(".a-long-caption-name-xxx")
    (tmp_path / temp_name).write_text("half")  # ... and leaves its temp file, as a SIGKILL would
    remove_stale_temps(caption)
    assert hidden(tmp_path) == [] and caption.read_text() == "second"


def test_a_folder_with_a_long_name_is_staged_and_swapped_in(tmp_path):
    target = tmp_path / LONG_STEM
    for text in ("first", "second"):  # the second swap sets the first folder aside under a hidden name
        staging = staging_folder(target)
        (staging / "model_index.json").write_text(text)
        swap_in_folder(staging, target)
    assert (target / "model_index.json").read_text() == "second" and hidden(tmp_path) == []
    assert len(os.fsencode(fitting_name(target, ".", ".old").name)) <= NAME_MAX


def test_long_names_are_cached_and_cleaned(kit, tmp_path):
    from core.captions.cleaning import run as clean
    from core.config import CacheConfig, CleanConfig, validate
    from core.dataset.latents import cache_path_for, load_cached
    from core.dataset.latents import run as cache
    from core.jobs.protocol import JobContext

    folder = tmp_path / "data"
    folder.mkdir()
    image = next(p for p in sorted((kit / "dataset").rglob("*.png")))
    shutil.copy(image, folder / f"{LONG_STEM}.png")
    (folder / f"{LONG_STEM}.txt").write_text("long_hair,  blue_eyes, long_hair")

    cfg = CacheConfig(train_data_dir=[str(folder)], pretrained_model_name_or_path=str(kit / "model"),
                      max_resolution="128,128", min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64)
    with JobContext(tmp_path / "cache", echo=False) as ctx:
        assert cache(cfg, ctx)["encoded"] == 1
    cached = cache_path_for(folder / f"{LONG_STEM}.png", cfg)
    assert cached.parent == folder and len(os.fsencode(cached.name)) <= NAME_MAX
    assert load_cached(cached)["latents"].shape[0] == 4

    leftover = folder / f"{temp_file_prefix(folder / f'{LONG_STEM}.txt')}killed01.tmp"  # a clean killed mid-write
    leftover.write_text("half")
    with JobContext(tmp_path / f"clean-{time.time_ns()}", echo=False) as ctx:
        result = clean(validate(CleanConfig, {"train_data_dir": [str(folder)]}, "test"), ctx)
    assert result["changed"] == 1 and (folder / f"{LONG_STEM}.txt").read_text() == "long hair, blue eyes"
    assert hidden(folder) == []
