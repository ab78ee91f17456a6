"""One writer per target: two jobs that would write the same output folder, captions or cache never run at
once; the second is refused at start, naming the job that holds the folder (real processes)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from trainkit import train_values

from core.config import SCHEMA_VERSION
from core.jobs.locks import Target, TargetBusy, acquire, busy_message, conflicts, locks_root, release
from core.jobs.run_folder import RunFolder
from core.jobs.runner import stop_job

REPO = Path(__file__).resolve().parent.parent

HOLD = """import sys, time
from core.config import SCHEMA_VERSION
from core.jobs.locks import Target, acquire
acquire([Target(sys.argv[1], sys.argv[2], "field")], sys.argv[3], sys.argv[4])
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """`holder(kind, folder, job)`: another process that holds a lock on `folder` until the test ends (or
    kills it); returns (process, its run folder)."""
    procs = []

    def start(kind: str, folder: Path, job: str = "clean"):
        run_dir = tmp_path / f"runs-{len(procs)}"
        proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(folder), job, str(run_dir)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc, run_dir

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=20)


def core(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def error_of(run_dir: Path) -> str:
    return next(e["message"] for e in RunFolder(run_dir).read_events() if e["event"] == "error")


def test_a_second_clean_on_a_dataset_is_refused_while_another_job_writes_its_captions(tmp_path, holder):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    Image.new("RGB", (16, 16)).save(dataset / "a.png")
    (dataset / "a.txt").write_text("Tag_One, tag_one")
    proc, holder_run = holder("captions", dataset, "tag")

    clean = ("clean", "--train_data_dir", str(dataset), "--rules", "underscores", "lowercase", "dedupe")
    result = core(*clean, "--run-dir", str(tmp_path / "second"))
    assert result.returncode == 1
    message = error_of(tmp_path / "second")
    assert message.startswith("refused: ") and "tag job" in message and str(holder_run) in message
    assert (dataset / "a.txt").read_text() == "Tag_One, tag_one"  # nothing written

    proc.kill()  # a holder that dies without a word leaves a stale lock: the next job takes it over
    proc.wait(timeout=20)
    result = core(*clean, "--run-dir", str(tmp_path / "third"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (dataset / "a.txt").read_text() == "tag one"
    assert not list(locks_root().glob("*.json"))  # released at the end


def test_a_folder_inside_or_around_a_held_one_is_busy_too(tmp_path, holder):
    (tmp_path / "data" / "10_cat").mkdir(parents=True)
    holder("captions", tmp_path / "data" / "10_cat")
    assert conflicts([Target("captions", str(tmp_path / "data"), "train_data_dir")])
    assert conflicts([Target("captions", str(tmp_path / "data" / "10_cat" / "sub"), "train_data_dir")])
    assert not conflicts([Target("latent cache", str(tmp_path / "data"), "train_data_dir")])  # another kind
    assert not conflicts([Target("captions", str(tmp_path / "data-2"), "train_data_dir")])  # a sibling name


def test_locks_are_taken_all_or_none(tmp_path, holder):
    holder("captions", tmp_path / "b")
    wanted = [Target("captions", str(tmp_path / "a"), "train_data_dir"),
              Target("captions", str(tmp_path / "b"), "train_data_dir")]
    with pytest.raises(TargetBusy, match="clean job"):
        acquire(wanted, "tag", tmp_path / "run")
    assert len(list(locks_root().glob("*.json"))) == 1  # only the holder's
    release(acquire(wanted[:1], "tag", tmp_path / "run"))
    assert len(list(locks_root().glob("*.json"))) == 1


def test_a_lock_whose_pid_was_reused_by_another_program_is_stale(tmp_path):
    """A pid is reused after a reboot or a long time: the lock also records when its process started."""
    locks_root().mkdir(parents=True)
    (locks_root() / "old.json").write_text(json.dumps({
        "job": "train", "pid": os.getpid(), "pid_created": 1.0, "run_dir": str(tmp_path / "old"),
        "kind": "model output", "folder": str(tmp_path / "out")}))
    assert not conflicts([Target("model output", str(tmp_path / "out"), "output_dir")])
    assert not (locks_root() / "old.json").exists()


def test_two_trainings_into_one_output_folder(demo_kit, tmp_path):
    """The reproduced failure: both ended `done`, one model silently replaced the other. Now the second
    is refused at start, and Check settings says the same before Start."""
    from core.train.preflight import check_training

    kit = demo_kit("sd1", 6, 0)
    values = train_values(kit, tmp_path / "out", max_train_steps=5000, output_name="first")
    config = tmp_path / "first.json"
    config.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "job": "train", "values": values}))
    first_run = tmp_path / "first-run"
    first = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(config), "--run-dir",
                              str(first_run)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not conflicts([Target("model output", str(tmp_path / "out"), "output_dir")]):
            assert first.poll() is None and time.time() < deadline, (first_run / "log.txt").read_text()
            time.sleep(0.2)

        second = {**values, "output_name": "second", "max_train_steps": 1}
        reported = [p for p in check_training(second).problems if str(first_run) in p.message]
        assert [p.field for p in reported] == ["output_dir", "train_data_dir"]  # its model and its latent cache
        config.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "job": "train", "values": second}))
        result = core("train", "--config", str(config), "--run-dir", str(tmp_path / "second-run"))
        assert result.returncode == 1
        assert error_of(tmp_path / "second-run") == "refused: " + "\n".join(p.message for p in reported)
        assert not (tmp_path / "out" / "second.safetensors").exists()
    finally:
        if first.poll() is None:
            stop_job(first_run)
        first.wait(timeout=60)
    assert RunFolder(first_run).read_status()["state"] == "stopped"
    assert not conflicts([Target("model output", str(tmp_path / "out"), "output_dir")])


def test_the_busy_message_names_the_job_its_run_folder_and_what_to_do(tmp_path):
    from core.jobs.locks import Holder

    target = Target("captions", str(tmp_path / "data"), "train_data_dir")
    holder = Holder("tag", 123, 1.0, str(tmp_path / "runs" / "tag-1"), "captions", str(tmp_path / "data" / "sub"))
    message = busy_message(target, holder)
    assert "tag job" in message and str(tmp_path / "runs" / "tag-1") in message and "pid 123" in message
    assert f"it writes {tmp_path / 'data' / 'sub'}" in message and "wait for it" in message


def test_undo_of_a_clean_waits_for_the_job_that_writes_those_captions(tmp_path, holder):
    from core.captions.cleaning import take_snapshot

    (tmp_path / "data" / "sub").mkdir(parents=True)
    caption = tmp_path / "data" / "sub" / "a.txt"
    caption.write_text("before")
    snapshot = take_snapshot([caption], "test", [])
    caption.write_text("after")
    _, holder_run = holder("captions", tmp_path / "data", "tag")
    result = core("undo_clean", "--snapshot", snapshot.id, "--run-dir", str(tmp_path / "undo"))
    assert result.returncode == 1 and str(holder_run) in error_of(tmp_path / "undo")
    assert caption.read_text() == "after"
