"""Saves under failure: a process killed (SIGKILL) while it writes a checkpoint leaves the previous one
intact, and the next save clears its leftovers; a disk that fills up mid-save gives a clear error that
names the file, and the previous checkpoint stays intact. (Kill -9 during training, then resume: see
tests/test_train.py test_killed_run_resumes_from_its_last_state.)"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from trainkit import assert_same_weights, train, train_values

from core.jobs.run_folder import RunFolder

REPO = Path(__file__).resolve().parent.parent

KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    import safetensors.torch

    def dying_save(tensors, filename, metadata=None):  # half a file on disk, then SIGKILL
        with open(filename, "wb") as f:
            f.write(b"\\0" * 100_000)
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    safetensors.torch.save_file = dying_save
    from core.models.sd import load_sd_model, save_sd_model
    save_sd_model(load_sd_model(sys.argv[1]), sys.argv[2], "safetensors", "fp32")
""")


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(kit, tmp_path):
    from core.models.sd import load_sd_model, save_sd_model

    checkpoint = tmp_path / "ckpt" / "model.safetensors"
    save_sd_model(load_sd_model(str(kit / "model")), checkpoint, "safetensors", "fp32")
    before = checkpoint.read_bytes()

    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(kit / "model"), str(checkpoint)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint.read_bytes() == before
    assert load_sd_model(str(checkpoint)).arch == "sd1"
    assert len(temp_files(checkpoint.parent)) == 1  # the killed writer's half file

    save_sd_model(load_sd_model(str(kit / "model")), checkpoint, "safetensors", "fp32")
    assert temp_files(checkpoint.parent) == []  # the next save removes it


def test_disk_full_while_training_saves_is_a_clear_error_and_the_last_checkpoint_survives(kit, tmp_path,
                                                                                          monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def fills_the_disk(tensors, filename, metadata=None):
        if "step00000004" not in str(filename):
            return real_save(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    out = tmp_path / "out"
    with pytest.raises(OSError) as failure:
        train(train_values(kit, out, save_every_n_steps=2), tmp_path / "run")
    message = str(failure.value)
    second = out / "model-step00000004.safetensors"
    assert f"cannot write {second}" in message and "No space left on device" in message
    assert "nothing was replaced" in message
    first = out / "model-step00000002.safetensors"
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    from core.models.sd import load_sd_model

    assert load_sd_model(str(first)).arch == "sd1"
    assert not second.exists() and temp_files(out) == []


def test_a_full_drive_reaches_the_run_log_as_one_clear_line(kit, tmp_path, small_tmpfs):
    """Through the job protocol, on a real full drive: the run ends in error, its error event names the
    file and the space, and the drive keeps no partial file."""
    from core.config import TrainConfig
    from core.jobs.protocol import execute
    from core.jobs.registry import JOBS

    out = small_tmpfs(8)
    (out / "filler").write_bytes(b"\0" * (7 * 2**20))  # the 12 MB model does not fit in what is left
    run_dir = tmp_path / "run"
    cfg = TrainConfig(**train_values(kit, out, max_train_steps=2))
    assert execute("train", cfg, run_dir, JOBS["train"].load) == 1
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    errors = RunFolder(run_dir).read_events("error")
    assert len(errors) == 1, errors
    message = errors[0]["message"]
    assert message.startswith(f"OSError: [Errno 28] cannot write {out / 'model.safetensors'}: No space left on "
                              "device (it needs about 11.3 MiB, 1.0 MiB free on that drive); nothing was replaced"), message
    assert "free some space" in message and "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == ["filler"]


def test_an_interrupted_run_still_resumes_after_a_failed_save(kit, tmp_path, monkeypatch):
    """A run that died on a full disk resumes from its last good state to the uninterrupted result."""
    import safetensors.torch

    reference = tmp_path / "reference"
    train(train_values(kit, reference), tmp_path / "ref-run")

    real_save = safetensors.torch.save_file

    def full_at_step_4(tensors, filename, metadata=None):
        if "step00000004" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_at_step_4)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        train(train_values(kit, out, save_every_n_steps=2, save_state=True), tmp_path / "run")
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    state = out / "model-step00000002-state"
    assert (state / "training_state.json").is_file()
    train(train_values(kit, out, resume=str(state)), tmp_path / "run2")
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")
