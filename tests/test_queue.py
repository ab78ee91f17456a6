"""The job queue with real job processes (cheap scans, jobs that fail on bad input they meet at run time): order,
failures, chains, reordering while a job runs, frozen settings, a nonsense queue file, locked targets, the GPU rule,
stop, the command line end to end, and recovery: runners, jobs and the GUI killed (a training resumes from its saved
state, as if never stopped), two runners at once."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from core.config import ConfigError
from core.fsutil import runs_root
from core.jobs.locks import Target, acquire, release
from core.jobs.run_folder import RunFolder
from core.jobs.runner import start_job
from core.queue import store
from core.queue.chain import Step, add_chain
from core.queue.entries import frozen_config
from core.queue.runner import run, runner_holder
from core.queue.schedule import blocker, busy_jobs

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout=60.0, what="the condition"):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def statuses() -> list[str]:
    return [entry.status for entry in store.read_queue().entries]


def entry(entry_id: str):
    return store.read_queue().find(entry_id)


def scan(folder) -> dict:
    return {"train_data_dir": [str(folder)]}


def queue_runs() -> list[Path]:
    return sorted(runs_root().glob("*-queue-*")) if runs_root().is_dir() else []


def run_until_empty() -> list[str]:
    lines = []
    assert run(until_empty=True, poll_s=0.05, log=lines.append) == 0
    return lines


@pytest.fixture
def background_runner():
    """`background_runner()`: run the queue in a thread of the test (until empty); at teardown the queue is paused
    and the thread waited for."""
    threads = []

    def start() -> list[str]:
        lines = []
        thread = threading.Thread(target=run, kwargs={"until_empty": True, "poll_s": 0.05, "log": lines.append},
                                  daemon=True)
        thread.start()
        threads.append(thread)
        return lines

    yield start
    store.pause()
    for thread in threads:
        thread.join(timeout=60)


@pytest.fixture
def runner_process():
    """`runner_process()`: `python -m core queue run --until-empty` as a process of its own (killed at teardown)."""
    procs = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-m", "core", "queue", "run", "--until-empty", "--poll", "0.1"],
                                      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture
def hold(background_runner):
    """`hold(entry_id, job="scan")`: the entry's job process (or the run's in `run_name`), suspended as soon as it
    exists, so it stays running until `proc.resume()`; every held process is ended at teardown (before the
    background runners are waited for)."""
    held = []

    def _hold(entry_id: str = "", job: str = "scan", run_name: str = "") -> psutil.Process:
        def launched():
            runs = runs_root().glob(f"{job}-{run_name or 'queue-' + entry_id}-*")
            return next((run / "launcher.pid" for run in runs
                         if (run / "launcher.pid").is_file() and (run / "launcher.pid").read_text()), None)
        wait_for(launched, what=f"the job of {run_name or 'entry ' + entry_id} to start")
        proc = psutil.Process(int(launched().read_text()))
        proc.suspend()
        held.append(proc)
        return proc

    yield _hold
    for proc in held:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.mark.parametrize("on_failure", ["skip", "stop"])
def test_a_failed_middle_entry_skips_to_the_next_or_stops_the_queue(small_dataset, tmp_path, on_failure):
    store.set_on_failure(on_failure)
    first = store.add("scan", scan(small_dataset))
    bad = store.add("scan", scan(tmp_path / "no such folder"))  # valid settings; the job finds out when it runs
    third = store.add("scan", scan(small_dataset))
    run_until_empty()
    queue = store.read_queue()
    assert entry(first.id).status == "done" and Path(entry(first.id).run_dir).is_dir()
    assert entry(bad.id).status == "failed" and "dataset folder not found" in entry(bad.id).reason
    if on_failure == "skip":
        assert entry(third.id).status == "done" and not queue.paused
    else:
        assert entry(third.id).status == "waiting" and entry(third.id).run_dir is None
        assert queue.paused and bad.id in queue.pause_reason
        assert len(queue_runs()) == 2
        store.resume()
        run_until_empty()
        assert entry(third.id).status == "done"
    assert len(queue_runs()) == 3  # nothing ran twice


def test_a_chain_skips_what_follows_a_failed_step_and_can_be_queued_again(small_dataset, tmp_path):
    steps = [Step("tag", values={"model_dir": str(tmp_path / "no tagger")}), Step("clean"), Step("cache"),
             Step("train", values={"max_train_steps": 5})]
    model = str(tmp_path / "model.safetensors")
    tag, clean, cache, train = add_chain(steps, [str(small_dataset)], model, str(tmp_path / "out"))
    alone = store.add("scan", scan(small_dataset))
    assert (clean.after, cache.after, train.after) == (tag.id, clean.id, cache.id) and tag.after is None
    assert frozen_config(train).pretrained_model_name_or_path == model and frozen_config(train).max_train_steps == 5
    assert frozen_config(cache).train_data_dir == [str(small_dataset)]
    assert "train:" in train.summary and str(tmp_path / "out") in train.summary
    assert train.summary.endswith(f"(output name: {train.values['output_name']})")
    run_until_empty()
    assert entry(tag.id).status == "failed" and "WD14 tagger folder not found" in entry(tag.id).reason
    for later in (clean, cache, train):
        assert entry(later.id).status == "skipped"
        assert f"entry {tag.id} (tag), which failed" in entry(later.id).reason
    assert entry(alone.id).status == "done"  # not part of the chain: it runs
    assert [run.name.split("-")[0] for run in queue_runs()] == ["scan", "tag"]
    again = store.retry(tag.id)
    assert [e.id for e in again] == [tag.id, clean.id, cache.id, train.id]
    assert statuses() == ["waiting"] * 4 + ["done"]
    assert entry(tag.id).previous_runs and entry(tag.id).run_dir is None
    with pytest.raises(store.QueueError, match="cannot move above"):
        store.move(clean.id, "up")
    edited = store.edit(train.id, {**entry(train.id).values, "max_train_steps": 7})  # the GUI's Edit
    assert edited.values["max_train_steps"] == 7 and entry(train.id).after == cache.id
    with pytest.raises(store.QueueError, match="only a waiting entry"):
        store.edit(alone.id, entry(alone.id).values)
    store.remove(tag.id)  # not done: what runs after it cannot run
    assert statuses() == ["skipped"] * 3 + ["done"]
    assert "removed" in entry(clean.id).reason


def test_an_invalid_chain_step_queues_nothing(small_dataset):
    with pytest.raises(ConfigError, match=r"chain step 2 \(train\).*pretrained_model_name_or_path"):
        add_chain([Step("clean"), Step("train")], [str(small_dataset)])
    with pytest.raises(store.QueueError, match="no train preset named 'nope'"):
        add_chain([Step("train", preset="nope")], [str(small_dataset)])
    assert store.read_queue().entries == []


def test_a_chain_step_takes_its_base_settings_unless_a_preset_is_named(small_dataset):
    from core.config.presets import save_preset
    from core.queue.chain import step_values

    dataset = [str(small_dataset)]
    base = {"train_data_dir": ["/on/its/tab"], "only_with_tag": "dog"}  # a form's values, as set on its tab
    assert step_values(Step("clean", base=base), dataset) == {"train_data_dir": dataset, "only_with_tag": "dog"}
    save_preset("clean", "mine", {"dry_run": True})
    assert step_values(Step("clean", preset="mine", base=base), dataset) == {"train_data_dir": dataset,
                                                                            "dry_run": True}
    assert step_values(Step("clean", preset="mine", values={"only_with_tag": "cat"}), dataset)["only_with_tag"] == \
        "cat"


def test_settings_are_frozen_when_queued(small_dataset, tmp_path):
    from core.config.presets import save_preset

    values = {**scan(small_dataset), "verify_pixels": True}
    queued = store.add("scan", values)
    values["verify_pixels"] = False  # a later change of the form
    values["train_data_dir"].append(str(tmp_path / "elsewhere"))
    preset = save_preset("scan", "mine", {"train_data_dir": [str(small_dataset)], "verify_pixels": True})
    from_preset = store.add("scan", json.loads(preset.read_text())["values"])
    save_preset("scan", "mine", {"verify_pixels": False}, overwrite=True)  # the preset is edited afterwards
    run_until_empty()
    for item in (queued, from_preset):
        config = json.loads((Path(entry(item.id).run_dir) / "config.json").read_text())
        assert config["values"]["verify_pixels"] is True
        assert config["values"]["train_data_dir"] == [str(small_dataset)]
    assert entry(queued.id).values["verify_pixels"] is True and entry(queued.id).values["recursive"] is True
    with pytest.raises(ConfigError, match="train_data_dir"):
        store.add("scan", {"train_data_dir": []})
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        store.add("scan", {**scan(small_dataset), "nonsense": 1})
    assert len(store.read_queue().entries) == 2


@pytest.mark.parametrize("text, why", [
    ("{\"entries\": [", "is not valid JSON"),
    (json.dumps({"entries": [{"id": "x", "job": "scan", "values": {}, "status": "exploded", "added": 0}]}),
     "status"),
    (json.dumps({"entries": [{"id": "x", "job": "rm -rf", "values": {}, "added": 0}]}), "unknown job"),
    (json.dumps([1, 2, 3]), "is not a queue"),
])
def test_a_nonsense_queue_file_is_reported_backed_up_and_never_run(text, why):
    store.queue_dir().mkdir(parents=True)
    store.queue_file().write_text(text)
    lines = run_until_empty()
    backups = list(store.queue_dir().glob("queue.json.bad-*"))
    assert len(backups) == 1 and backups[0].read_text() == text
    notice = store.read_queue().notice
    assert str(store.queue_file()) in notice and why in notice and backups[0].name in notice
    assert notice in lines  # the runner says so too
    assert store.read_queue().entries == [] and not queue_runs()
    listing = subprocess.run([sys.executable, "-m", "core", "queue", "list"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0 and "NOTICE" in listing.stdout and backups[0].name in listing.stdout
    store.dismiss_notice()
    assert store.read_queue().notice == ""


def test_reorder_and_remove_while_a_job_runs(small_dataset, hold, background_runner):
    a, b, c, d = (store.add("scan", scan(small_dataset)) for _ in range(4))
    background_runner()
    held = hold(a.id)
    wait_for(lambda: entry(a.id).run_dir, what="the run folder to be recorded")
    with pytest.raises(store.QueueError, match="is running: stop it first"):
        store.remove(a.id)
    store.move(d.id, "up")
    store.move(d.id, "up")
    store.remove(c.id)
    assert [e.id for e in store.read_queue().entries] == [a.id, d.id, b.id]
    assert statuses() == ["running", "waiting", "waiting"]
    held.resume()
    wait_for(lambda: statuses() == ["done"] * 3, what="all three to finish")
    assert entry(d.id).started < entry(b.id).started
    assert len(queue_runs()) == 3


def test_a_job_without_gpu_runs_beside_a_gpu_job_a_second_gpu_job_waits(small_dataset, tmp_path, hold,
                                                                          background_runner):
    other = tmp_path / "other"
    other.mkdir()
    tagger = {"model_dir": str(tmp_path / "no tagger")}
    gpu = store.add("tag", {**scan(small_dataset), **tagger})
    side = store.add("scan", scan(other))
    second_gpu = store.add("tag", {**scan(other), **tagger})
    background_runner()
    held = hold(gpu.id, "tag")
    wait_for(lambda: entry(side.id).status == "done", what="the scan beside the tagging")
    wait_for(lambda: "one GPU job runs at a time" in entry(second_gpu.id).reason, what="the second tagging to wait")
    assert entry(gpu.id).status == "running" and entry(second_gpu.id).status == "waiting"
    same_folder = store.make_entry("scan", scan(small_dataset))
    assert f"both use {small_dataset}" in blocker(same_folder, None, busy_jobs(store.read_queue()))
    held.resume()
    wait_for(lambda: entry(second_gpu.id).status == "failed", what="the second tagging to run")
    assert entry(gpu.id).status == "failed"
    outside = start_job("tag", {**scan(other), **tagger}, name="outside")  # the GUI's Start, beside the queue
    held = hold(job="tag", run_name="outside")
    third_gpu = store.add("tag", {**scan(small_dataset), **tagger})
    background_runner()
    wait_for(lambda: f"the tag run in {outside}" in entry(third_gpu.id).reason, what="the queue to wait for it")
    assert entry(third_gpu.id).status == "waiting"
    held.resume()
    wait_for(lambda: entry(third_gpu.id).status == "failed", what="the third tagging to run")


def test_a_locked_target_makes_the_entry_wait_not_fail(small_dataset, tmp_path, hold, background_runner):
    captions = [Target("captions", str(small_dataset), "train_data_dir")]
    locks = acquire(captions, "clean", tmp_path / "another run")
    cleaning = store.add("clean", scan(small_dataset))
    background_runner()
    wait_for(lambda: "is writing its captions" in entry(cleaning.id).reason, what="the entry to say why it waits")
    assert entry(cleaning.id).status == "waiting" and not queue_runs()
    release(locks)
    held = hold(cleaning.id, "clean")
    locks = acquire(captions, "clean", tmp_path / "another run")  # taken between the check and the job's start
    held.resume()
    wait_for(lambda: entry(cleaning.id).previous_runs, what="the refused start to be recorded")
    assert entry(cleaning.id).status == "waiting" and "is writing its captions" in entry(cleaning.id).reason
    release(locks)
    wait_for(lambda: entry(cleaning.id).status == "done", what="the cleaning to run")
    assert len(queue_runs()) == 2


@pytest.mark.parametrize("pause", [False, True])
def test_stop_the_running_entry(small_dataset, hold, background_runner, pause):
    running = store.add("scan", scan(small_dataset))
    after_it = store.add("scan", scan(small_dataset), after=running.id)
    next_one = store.add("scan", scan(small_dataset))
    background_runner()
    held = hold(running.id)
    wait_for(lambda: entry(running.id).run_dir, what="the run folder to be recorded")
    assert [e.id for e in store.stop_running(pause_queue=pause)] == [running.id]
    assert (Path(entry(running.id).run_dir) / "STOP").exists()
    held.resume()
    wait_for(lambda: entry(running.id).status == "stopped", what="the job to stop")
    assert entry(after_it.id).status == "skipped" and "which stopped" in entry(after_it.id).reason
    if pause:
        time.sleep(0.5)
        assert entry(next_one.id).status == "waiting" and store.read_queue().paused
    else:
        wait_for(lambda: entry(next_one.id).status == "done", what="the next entry")
    with pytest.raises(store.QueueError, match="not running"):
        store.stop_running(running.id)


def core(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """`python -m core queue ...` (in the folder `cwd`, the studio importable from anywhere)."""
    return subprocess.run([sys.executable, "-m", "core", "queue", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_command_line_end_to_end(small_dataset, tmp_path):
    preset = tmp_path / "scan.json"
    preset.write_text(json.dumps({"job": "scan", "values": {"verify_pixels": True}}))
    first = core("add", "--job", "scan", "--config", str(preset), "--train_data_dir", small_dataset.name,
                 cwd=small_dataset.parent)  # a relative folder is made absolute: the job runs elsewhere, later
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.split()[1].rstrip(":")
    queued = entry(first_id)
    assert queued.values["train_data_dir"] == [str(small_dataset)] and queued.values["verify_pixels"] is True
    second = core("add", "--job", "scan", "--set", f"train_data_dir={small_dataset}", "--after", first_id)
    assert second.returncode == 0, second.stderr
    second_id = second.stdout.split()[1].rstrip(":")
    bad = core("add", "--job", "scan", "--set", "train_data_dir=[]")
    assert bad.returncode == 2 and "train_data_dir" in bad.stderr
    assert core("remove", "nosuch").returncode == 1
    assert "cannot move above" in core("move", second_id, "up").stderr
    for args in (["on-failure", "stop"], ["pause"]):
        assert core(*args).returncode == 0
    ran = core("run", "--until-empty", "--poll", "0.1")
    assert ran.returncode == 0 and "paused" in ran.stdout and not queue_runs()
    listing = core("list")
    assert "paused" in listing.stdout and "on failure: stop" in listing.stdout and f"after {first_id}" in listing.stdout
    data = json.loads(core("list", "--json").stdout)
    assert [e["id"] for e in data["entries"]] == [first_id, second_id] and data["runner"] is None
    assert core("resume").returncode == 0
    third = core("add", "--job", "scan", "--train_data_dir", str(small_dataset), "--start")
    assert third.returncode == 0 and "runner started" in third.stdout, third.stdout + third.stderr
    wait_for(lambda: statuses() == ["done"] * 3, timeout=90, what="the started runner to run all three")
    wait_for(lambda: runner_holder() is None, what="the runner to end")
    assert "nothing left to run" in (store.queue_dir() / "runner.log").read_text()
    assert "nothing is running" in core("stop").stdout
    assert core("retry", second_id).returncode == 0 and entry(second_id).status == "waiting"
    assert core("remove", second_id).returncode == 0 and [e.id for e in store.read_queue().entries] == \
        [first_id, third.stdout.split()[1].rstrip(":")]
    chain = core("chain", "--dataset", str(small_dataset), "--steps", "clean,scan", "--set", "clean.dry_run=true",
                 "--set", "scan.verify_pixels=true")
    assert chain.returncode == 0, chain.stderr
    clean_entry, scan_entry = store.read_queue().entries[-2:]
    assert clean_entry.job == "clean" and clean_entry.values["dry_run"] is True
    assert scan_entry.after == clean_entry.id and scan_entry.values["verify_pixels"] is True
    wrong = core("chain", "--dataset", str(small_dataset), "--steps", "clean", "--preset", "train=x")
    assert wrong.returncode == 2 and "one of the steps (clean)" in wrong.stderr
    assert os.path.isabs(clean_entry.values["train_data_dir"][0])


# --- recovery: runners killed, jobs killed, two runners ------------------------------------------------------------

def test_a_killed_runner_is_replaced_and_its_running_job_adopted_not_run_again(small_dataset, hold,
                                                                               background_runner, runner_process):
    first, second = (store.add("scan", scan(small_dataset)) for _ in range(2))
    killed = runner_process()
    held = hold(first.id)
    wait_for(lambda: entry(first.id).run_dir, what="the run folder to be recorded")
    assert runner_holder()["pid"] == killed.pid
    killed.kill()  # SIGKILL: no cleanup, its lock and perhaps the queue mutex stay behind
    killed.wait(timeout=30)
    assert runner_holder() is None and held.is_running()  # the job is detached: it outlives its runner
    run_dir = entry(first.id).run_dir
    lines = background_runner()
    wait_for(lambda: any("runs" in line for line in lines), what="the new runner to take over")
    time.sleep(0.3)
    assert statuses() == ["running", "waiting"]  # adopted: one job without GPU at a time
    held.resume()
    wait_for(lambda: statuses() == ["done", "done"], what="both entries to finish")
    assert entry(first.id).run_dir == run_dir and entry(first.id).previous_runs == []
    assert len(queue_runs()) == 2  # nothing ran twice


def test_a_job_killed_with_its_runner_is_interrupted_and_not_run_again_by_itself(small_dataset, hold,
                                                                                 runner_process):
    first, second = (store.add("scan", scan(small_dataset)) for _ in range(2))
    killed = runner_process()
    held = hold(first.id)
    wait_for(lambda: entry(first.id).run_dir, what="the run folder to be recorded")
    killed.kill()
    held.kill()  # the machine went down, say
    killed.wait(timeout=30)
    RunFolder(entry(first.id).run_dir).update_status(started=time.time() - 60)  # it died a minute ago (a job gets
    run_until_empty()                                                          # 10 s to say it runs)
    interrupted = entry(first.id)
    assert interrupted.status == "interrupted" and "its process died" in interrupted.reason
    assert "runs again only when you queue it again" in interrupted.reason
    assert entry(second.id).status == "done" and len(queue_runs()) == 2


def _killed_training(tmp_path, small_dataset, output: Path) -> str:
    """A queued training marked running in a run folder whose process is gone; returns its id."""
    queued = store.add("train", {"train_data_dir": [str(small_dataset)], "output_dir": str(output),
                                 "pretrained_model_name_or_path": str(tmp_path / "model.safetensors"),
                                 "save_state": True, "save_every_n_steps": 2})
    run_dir = runs_root() / f"train-queue-{queued.id}-20250101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"job": "train", "state": "running", "pid": os.getpid(),
                                                     "pid_created": 1.0, "started": time.time() - 60}))
    with store.editing() as queue:
        marked = queue.find(queued.id)
        marked.status, marked.run_dir, marked.started = "running", str(run_dir), time.time() - 60
    return queued.id


def saved_state(output: Path, step: int, mtime: float | None = None) -> Path:
    state = output / f"model-step{step:08d}-state"
    state.mkdir(parents=True)
    (state / "training_state.json").write_text("{}")
    if mtime:
        os.utime(state, (mtime, mtime))
    return state


def test_an_interrupted_training_resumes_from_its_newest_saved_state(small_dataset, tmp_path):
    from core.queue.schedule import settle

    store.pause()  # the test looks at the decision; the trainer's resume is tested with the trainer
    resumable, fresh = tmp_path / "out", tmp_path / "fresh"
    resumable_id, fresh_id = _killed_training(tmp_path, small_dataset, resumable), \
        _killed_training(tmp_path, small_dataset, fresh)
    saved_state(resumable, 2)
    newest = saved_state(resumable, 4)
    saved_state(fresh, 8, mtime=time.time() - 3600)  # an older run's state, from before it was queued
    with store.editing() as queue:
        settle(queue)
    resumed = entry(resumable_id)
    assert resumed.status == "waiting" and resumed.resume_from == str(newest) and resumed.run_dir is None
    assert resumed.run_values()["resume"] == str(newest) and resumed.values["resume"] == ""  # frozen values kept
    assert "interrupted" in resumed.reason and str(newest) in resumed.reason and len(resumed.previous_runs) == 1
    not_resumed = entry(fresh_id)
    assert not_resumed.status == "interrupted" and "no saved training state" in not_resumed.reason


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its children, as a crash or a power cut would: nothing gets to write a word."""
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)


def test_a_training_killed_with_its_runner_resumes_from_its_saved_state_as_if_never_stopped(demo_kit, tmp_path,
                                                                                            runner_process):
    from trainkit import assert_same_weights, train, train_values

    kit = demo_kit("sd1", 6, 0)
    reference = tmp_path / "reference"
    train(train_values(kit, reference, max_train_steps=30), tmp_path / "reference-run")
    out = tmp_path / "out"
    queued = store.add("train", train_values(kit, out, max_train_steps=30, save_every_n_steps=3, save_state=True))
    runner = runner_process()
    wait_for(lambda: list(out.glob("model-step*-state/training_state.json")), timeout=240, what="a saved state")
    runner.kill()  # first: a runner that saw its job die would resume it at once
    runner.wait(timeout=30)
    run_dir = Path(entry(queued.id).run_dir)
    kill_tree(int((run_dir / "launcher.pid").read_text()))  # the job, mid-run
    assert not (out / "model.safetensors").exists()

    run_until_empty()  # the next runner (the GUI's start, the command line's queue run)
    resumed = entry(queued.id)
    assert resumed.status == "done" and resumed.previous_runs == [str(run_dir)] and resumed.resume_from
    assert f"resumed from {resumed.resume_from} at step" in (Path(resumed.run_dir) / "log.txt").read_text()
    assert_same_weights(reference / "model.safetensors", out / "model.safetensors")
    assert len(queue_runs()) == 2


def test_the_gui_and_its_runner_killed_mid_job_a_restarted_gui_goes_on_and_nothing_runs_twice(
        small_dataset, studio_home, free_port, hold, runner_process):
    from test_gui_browser import start_gui

    first, second = (store.add("scan", scan(small_dataset)) for _ in range(2))
    runner = runner_process()  # as a GUI starts it: a process of its own
    held = hold(first.id)
    gui = start_gui(free_port(), studio_home / "gui.log")  # it finds the runner and starts no other
    assert runner_holder()["pid"] == runner.pid
    gui.kill()  # SIGKILL of the GUI and of the runner, mid-job: the detached job goes on
    runner.kill()
    gui.wait(timeout=30)
    runner.wait(timeout=30)
    assert held.is_running() and runner_holder() is None and statuses() == ["running", "waiting"]

    gui = start_gui(free_port(), studio_home / "gui.log")  # its start resumes the queue
    try:
        wait_for(lambda: runner_holder() is not None, what="the restarted GUI to start a runner")
        assert runner_holder()["pid"] not in (gui.pid, runner.pid)
        time.sleep(0.5)
        assert statuses() == ["running", "waiting"]  # the held job adopted, not started again
        held.resume()
        wait_for(lambda: statuses() == ["done", "done"], timeout=90, what="both entries to finish")
    finally:
        gui.kill()
        gui.wait(timeout=30)
    assert entry(first.id).previous_runs == [] and len(queue_runs()) == 2


def test_two_runners_at_once_only_one_runs(small_dataset, hold, runner_process):
    from core.queue.runner import ensure_runner

    first, second = (store.add("scan", scan(small_dataset)) for _ in range(2))
    runners = [runner_process(), runner_process()]
    held = hold(first.id)
    wait_for(lambda: any(proc.poll() is not None for proc in runners), what="the second runner to give up")
    loser = next(proc for proc in runners if proc.poll() is not None)
    winner = next(proc for proc in runners if proc is not loser)
    assert loser.returncode == 0 and f"another queue runner (pid {winner.pid})" in loser.communicate()[0]
    assert ensure_runner() is None  # the GUI starts none either
    held.resume()
    assert winner.wait(timeout=90) == 0
    assert statuses() == ["done", "done"] and len(queue_runs()) == 2
