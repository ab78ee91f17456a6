"""The Runs tab and what it reads from run folders (core/jobs/run_summary.py)."""
import dataclasses
import json
import time

import psutil

from core.fsutil import runs_root
from core.jobs.registry import JOBS
from core.jobs.run_folder import EVENTS_TAIL_BYTES, RunFolder
from core.jobs.run_summary import last_metric, output_files


def event_line(kind: str, **fields) -> str:
    return json.dumps({"event": kind, "time": time.time(), **fields}) + "\n"


def loss_events(values, name="loss") -> str:
    return "".join(event_line("metric", name=name, step=step, value=value) for step, value in enumerate(values, 1))


def make_run(name: str, job: str = "train", events: str = "", result: dict | None = None,
             state: str = "done", started: float | None = None):
    """A run folder as core/jobs/runner.py and core/jobs/protocol.py leave it."""
    folder = RunFolder(runs_root() / name)
    folder.path.mkdir(parents=True)
    started = started or time.time() - 90
    folder.status_file.write_text(json.dumps({"job": job, "state": state, "started": started,
                                              "ended": started + 75, "exit_code": 0}))
    folder.events_file().write_text(events)
    folder.log_file().write_text(f"{job}: started\n{job}: {state}\n")
    folder.config_file.write_text(json.dumps({"job": job}))
    if result is not None:
        folder.result_file.write_text(json.dumps(result))
    return folder.path


def test_last_metric_is_the_latest_value_of_that_name():
    run = make_run("train-a", events=event_line("progress", step=0, total=3) + loss_events([0.9, 0.5, 0.25])
                   + event_line("metric", name="lr", step=3, value=1e-4) + event_line("done"))
    assert last_metric(run, "loss") == 0.25
    assert last_metric(run, "lr") == 1e-4
    assert last_metric(run, "val_loss") is None


def test_last_metric_reads_only_the_end_of_a_large_file():
    events = loss_events([1.0] * 20_000) + loss_events([0.125]) + event_line("checkpoint", path="x", step=20_001)
    run = make_run("train-big", events=events)
    assert RunFolder(run).events_file().stat().st_size > 20 * EVENTS_TAIL_BYTES
    tail = RunFolder(run).last_events()
    assert 0 < len(tail) < 1000 and tail[-1]["event"] == "checkpoint"
    assert all(set(event) >= {"event", "time"} for event in tail)  # the cut first line is dropped
    assert last_metric(run, "loss") == 0.125


def test_partial_last_line_and_missing_events_are_tolerated():
    run = make_run("train-writing", events=loss_events([0.7, 0.6]) + '{"event": "metric", "name": "loss", "va',
                   state="running")
    assert last_metric(run, "loss") == 0.6
    empty = make_run("scan-a", job="scan")
    RunFolder(empty).events_file().unlink()
    assert RunFolder(empty).last_events() == [] and last_metric(empty, "loss") is None
    assert output_files(empty) == []


def test_output_files_lists_checkpoints_model_and_state(tmp_path):
    pruned, kept, final = tmp_path / "out-000010.safetensors", tmp_path / "out-000020.safetensors", tmp_path / "out"
    kept.write_bytes(b"x")
    final.mkdir()  # a diffusers folder
    events = (loss_events([0.5]) + event_line("checkpoint", path=str(pruned), step=10)
              + event_line("checkpoint", path=str(kept), step=20) + event_line("checkpoint", path=str(final), step=30))
    done = make_run("train-done", events=events, result={"steps": 30, "model": str(final), "seconds": 4.2})
    assert output_files(done) == [(pruned, False), (kept, True), (final, True)]

    state = tmp_path / "out-state-000012"
    state.mkdir()
    stopped = make_run("train-stopped", events=event_line("checkpoint", path=str(pruned), step=10),
                       result={"stopped_at": 12, "state": str(state), "seconds": 2.0}, state="stopped")
    assert output_files(stopped) == [(pruned, False), (state, True)]


def test_runs_table_shows_the_final_loss_of_training_runs():
    from tabs.runs import COLUMNS, runs_table

    table, folders, empty = runs_table()
    assert table.empty and folders == [] and empty.startswith("**No runs yet.**") and "*Try it*" in empty
    make_run("scan-old", job="scan", events=event_line("progress", step=5, total=5), started=time.time() - 500)
    make_run("train-new", events=loss_events([0.5, 0.123456]), started=time.time() - 100)
    table, folders, empty = runs_table()
    assert empty == ""
    assert list(table.columns) == COLUMNS
    rows = table.to_dict("records")
    assert [row["folder"] for row in rows] == ["train-new", "scan-old"]
    assert rows[0]["final loss"] == "0.1235" and rows[1]["final loss"] == ""
    assert rows[0]["status"] == "done" and rows[0]["duration"] == "1:15"
    assert folders == [str(runs_root() / "train-new"), str(runs_root() / "scan-old")]


def test_run_details_show_output_files(tmp_path):
    from tabs.runs import run_details

    model = tmp_path / "final.safetensors"
    model.write_bytes(b"x")
    gone = tmp_path / "step-10.safetensors"
    run = make_run("train-x", events=event_line("checkpoint", path=str(gone), step=10),
                   result={"steps": 20, "model": str(model)})
    header, log, config, result, outputs = run_details(str(run))
    assert "**train**" in header and "train: done" in log and json.loads(result)["steps"] == 20
    assert f"- `{model}`\n" in outputs + "\n"
    assert f"- `{gone}` — *no longer exists" in outputs
    assert "none recorded" in run_details(str(make_run("scan-x", job="scan")))[4]


def test_tensorboard_link_errors_are_messages():
    from tabs.runs import tensorboard_link

    message = tensorboard_link(str(make_run("scan-y", job="scan")))
    assert "TensorBoard did not start" in message and "no TensorBoard logs" in message
    assert "Traceback" not in message


def test_tensorboard_link_points_at_the_server(monkeypatch):
    import tabs.runs

    run = make_run("train-tb")
    monkeypatch.setattr(tabs.runs, "start_tensorboard", lambda run_dir: "http://127.0.0.1:6123/")
    assert tabs.runs.tensorboard_link(str(run)).startswith("[Open TensorBoard](http://127.0.0.1:6123/)")


def test_runs_tab_builds_with_its_controls():
    import gradio as gr

    from tabs import runs

    with gr.Blocks() as blocks:
        runs.build(blocks)
    elem_ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"runs-table", "runs-empty", "run-tensorboard", "run-tensorboard-link", "run-outputs"} <= elem_ids


def test_stop_ends_a_job_that_ignores_it_after_its_grace_period(stuck_job, monkeypatch):
    from core.jobs.runner import run_state
    from tabs.runs import stop_run

    run_dir, proc = stuck_job
    monkeypatch.setitem(JOBS, "scan", dataclasses.replace(JOBS["scan"], stop_grace_s=0.5))
    started = time.monotonic()
    assert "0.5 s" in stop_run(str(run_dir))
    assert RunFolder(run_dir).stop_requested()
    while run_state(run_dir) != "killed" and time.monotonic() - started < 30:
        time.sleep(0.05)
    assert run_state(run_dir) == "killed" and time.monotonic() - started >= 0.5
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_runs_table_shows_the_measured_peak_beside_the_estimate():
    from tabs.runs import run_details, runs_table

    gib = 2**30
    make_run("train-gpu", result={"steps": 3, "measured": {"device": "NVIDIA H100", "peak_allocated": 9 * gib,
                                                           "peak_reserved": 10 * gib, "estimated": 10 * gib,
                                                           "error_percent": -10.0, "steps_per_s": 2.0}})
    make_run("train-cpu", result={"steps": 3, "measured": {"device": "cpu", "peak_rss": 3 * gib,
                                                           "peak_rss_above_model": gib // 2}},
             started=time.time() - 200)
    rows = {row["folder"]: row for row in runs_table()[0].to_dict("records")}
    assert rows["train-gpu"]["peak memory"] == "9.00 GiB GPU (est. 10.00, -10%)"
    assert rows["train-cpu"]["peak memory"] == "0.50 GiB RAM above the model"
    assert "Peak memory: 9.00 GiB GPU" in run_details(str(runs_root() / "train-gpu"))[0]
