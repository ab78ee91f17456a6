"""The run side panel (tabs/live_panel.py): which run it follows, what it shows of a run folder written by
hand, and what the page says when a run ends."""
import json
import os
import time

import gradio as gr
import pytest
from PIL import Image

from core.fsutil import runs_root
from core.jobs.run_folder import RunFolder
from tabs import live_panel
from tabs.live_panel import LivePanel, RunIndex, attached, ending


def write_run(name, job="scan", state="done", started=None, events=(), lines=(), samples=0, error=None, pid=None):
    """A run folder as a job leaves it; an active one carries this test's pid (a live process) unless told."""
    folder = RunFolder(runs_root() / name)
    folder.samples_dir.mkdir(parents=True)
    status = {"job": job, "state": state, "started": started or time.time(), "error": error}
    if state in ("starting", "running"):
        status["pid"] = pid or os.getpid()
    folder.status_file.write_text(json.dumps(status))
    paths = []
    for i in range(samples):
        paths.append(folder.samples_dir / f"step{i:03d}.png")
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(paths[-1])
    events = [*events, *({"event": "image", "path": str(p)} for p in paths)]
    folder.events_file().write_text("".join(json.dumps(e) + "\n" for e in events))
    folder.log_file().write_text("".join(f"{line}\n" for line in lines))
    return str(folder.path)


def training_events(steps=20, total=100):
    for step in range(1, steps + 1):
        yield {"event": "progress", "step": step, "total": total, "time": 1000.0 + step}
        yield {"event": "metric", "name": "loss", "step": step, "value": 1.0 / step}
        yield {"event": "metric", "name": "lr", "step": step, "value": 1e-4}


def test_follows_the_newest_active_run_of_any_job_else_the_newest_run():
    index = RunIndex()
    assert index.followed() is None
    now = time.time()
    old_train = write_run("train-a", job="train", state="running", started=now - 100)
    scan = write_run("scan-b", job="scan", state="running", started=now - 50)
    write_run("tag-c", job="tag", state="done", started=now - 10)  # newest, but finished
    write_run("clean-d", job="clean", state="running", started=now - 200, pid=2 ** 22 + 12345)  # process gone
    assert index.active() == [scan, old_train]
    assert index.followed() == scan
    RunFolder(scan).update_status(state="done", ended=now)  # re-read: its status.json changed
    assert index.followed() == old_train
    RunFolder(old_train).update_status(state="stopped", ended=now)
    assert index.followed() == str(runs_root() / "tag-c")


def test_a_tick_over_300_runs_reads_only_the_status_files_that_changed(monkeypatch):
    for i in range(300):
        write_run(f"scan-{i:03d}", started=1000.0 + i)
    index = RunIndex()
    reads = []
    original = RunFolder.read_status
    monkeypatch.setattr(RunFolder, "read_status", lambda self: reads.append(self.path.name) or original(self))
    assert index.followed().endswith("scan-299")
    assert len(reads) == 300
    reads.clear()
    assert index.followed().endswith("scan-299") and reads == []
    newest = write_run("train-new", job="train", state="running")
    assert index.followed() == newest and reads.count("train-new") >= 1 and len(set(reads)) == 1


def test_what_the_panel_shows_of_a_training_run():
    run_dir = write_run("train-x", job="train", state="running", events=training_events(),
                        lines=[f"line {i}" for i in range(30)], samples=6)
    run, ended = attached(run_dir)
    assert not ended and (run["job"], run["state"], run["step"], run["total"]) == ("train", "running", 20, 100)
    assert run["lines"] == [f"line {i}" for i in range(22, 30)]  # the last 8
    with gr.Blocks():
        panel = LivePanel()
    updates = panel.view(run, weight=0.0, redraw=True)
    assert "20/100 (20%)" in updates[panel.progress] and "**train** · running" in updates[panel.status]
    assert updates[panel.log].splitlines() == run["lines"]
    loss = updates[panel.loss_chart]
    assert set(loss["series"]) == {"loss", "smoothed"} and len(loss) == 40
    assert loss[loss["series"] == "smoothed"]["value"].tolist() == pytest.approx([1.0 / s for s in range(1, 21)])
    assert "data-points='20'" in updates[panel.loss_summary] and "1e-04" in updates[panel.lr_summary].replace(
        "0.0001", "1e-04")
    assert [name for _, name in updates[panel.gallery]] == ["step005.png", "step004.png", "step003.png",
                                                              "step002.png"]  # the 4 newest, newest first
    assert updates[panel.training].visible is True and updates[panel.stop]["interactive"] is True


def test_a_long_log_is_read_from_near_its_end():
    run_dir = write_run("scan-long", lines=[f"line {i} " + "x" * 100 for i in range(5000)])
    run, ended = attached(run_dir)
    assert ended  # (it says "done"): announced only if it was seen active
    assert run["lines"] == [f"line {i} " + "x" * 100 for i in range(4992, 5000)]
    assert run["log_offset"] == os.path.getsize(RunFolder(run_dir).log_file())


def test_a_scan_shows_no_training_view():
    run, _ = attached(write_run("scan-y", events=[{"event": "progress", "step": 3, "total": 3}],
                                lines=["scan: done"]))
    with gr.Blocks():
        panel = LivePanel()
    updates = panel.view(run, weight=0.9, redraw=True)
    assert updates[panel.training].visible is False and panel.loss_chart not in updates
    assert updates[panel.stop]["interactive"] is False and updates[panel.log] == "scan: done"


def test_the_end_is_announced_once_by_the_fast_tick():
    run_dir = write_run("train-z", job="train", state="running", events=training_events(3, 3))
    with gr.Blocks():
        panel = LivePanel()
    run, _ = attached(run_dir)
    ticking = panel.follow(run, 0.9)
    assert panel.ended not in ticking and ticking[panel.follow_timer].active is True
    RunFolder(run_dir).update_status(state="done", ended=time.time())
    ended = panel.follow(ticking[panel.run], 0.9)
    assert ended[panel.ended] == "train run train-z finished"
    assert ended[panel.follow_timer].active is False
    assert panel.ended not in panel.follow(ended[panel.run], 0.9)


def test_the_slow_tick_opens_the_panel_for_a_run_started_elsewhere_and_announces_unfollowed_ends():
    now = time.time()
    first = write_run("scan-1", state="running", started=now - 20)
    with gr.Blocks():
        panel = LivePanel()
    loaded = panel.load(0.9)
    assert loaded[panel.run]["run_dir"] == first and loaded[panel.sidebar].open is True
    assert loaded[panel.active] == [first]
    second = write_run("train-2", job="train", state="running", started=now - 5)  # e.g. from the command line
    switched = panel.watch(loaded[panel.run], loaded[panel.active], 0.9)
    assert switched[panel.run]["run_dir"] == second and switched[panel.sidebar].open is True
    RunFolder(first).update_status(state="error", error="CUDA out of memory", ended=now)
    later = panel.watch(switched[panel.run], switched[panel.active], 0.9)
    assert later[panel.ended] == "scan run scan-1 failed: CUDA out of memory"
    assert panel.run not in later  # still following the newest active run


def test_endings_say_the_outcome_and_warn_on_failure():
    run = {"job": "cache", "run_dir": "/runs/cache-x", "state": "done"}
    assert ending(run) == ("cache run cache-x finished", gr.Info)
    assert ending({**run, "state": "stopped"})[0] == "cache run cache-x was stopped"
    assert ending({**run, "state": "killed"}) == ("cache run cache-x ended unexpectedly", gr.Warning)
    assert ending({**run, "state": "error", "error": "disk full"}) == ("cache run cache-x failed: disk full", gr.Warning)
    assert ending({**run, "state": "invalid"})[1] is gr.Warning


def test_a_start_from_any_job_panel_opens_the_side_panel():
    from tabs.job_panel import PANELS, JobPanel

    with gr.Blocks() as blocks:
        panels = [JobPanel("scan"), JobPanel("tag")]
        live_panel.build(blocks)
    assert not PANELS  # taken by the side panel of this page
    starts = {d["targets"][0][0] for d in blocks.config["dependencies"] if d["targets"]
              and d["targets"][0][1] == "change" and len(d["outputs"]) > 10}
    assert {p.started._id for p in panels} <= starts


def test_a_run_started_here_that_ended_before_the_first_look_is_announced_and_an_old_one_is_not():
    quick = write_run("scan-quick", state="done", lines=["scan: done"])
    with gr.Blocks():
        panel = LivePanel()
    started = panel.attach(quick, 0.9, was_active=True)  # a job panel of the page started it
    assert started[panel.ended] == "scan run scan-quick finished" and started[panel.sidebar].open is True
    loaded = panel.load(0.9)  # a fresh page shows it, quietly
    assert loaded[panel.run]["run_dir"] == quick and panel.ended not in loaded and panel.sidebar not in loaded
