"""gui.py arguments and the app itself (served over HTTP, tabs present)."""
import json
import time
import urllib.request

import pytest

import gui


def test_defaults_bind_loopback_only():
    args = gui.parse_args([])
    assert (args.host, args.port, args.auth, args.share, args.inbrowser) == ("127.0.0.1", 7860, None, False, False)


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0"], ["--host", "192.168.1.5"], ["--share"]])
def test_exposed_without_auth_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gui.parse_args(argv)
    assert exit_info.value.code == 2
    assert "without a login" in capsys.readouterr().err


def test_exposed_with_auth_is_allowed():
    args = gui.parse_args(["--host", "0.0.0.0", "--auth", "me:secret pass"])
    assert args.auth == ("me", "secret pass")
    assert gui.parse_args(["--host", "::1"]).host == "::1"
    assert gui.parse_args(["--host", "localhost"]).host == "localhost"


def test_bad_auth_is_rejected(capsys):
    with pytest.raises(SystemExit):
        gui.parse_args(["--auth", "nopassword"])
    assert "user:password" in capsys.readouterr().err


def test_app_serves_its_tabs(free_port):
    from tabs.app import build_app

    app = build_app()
    # gradio 6.31 renders race on the session's block table: all of the page's renders run one at a time
    renders = [fn for fn in app.fns.values() if fn.renderable is not None]
    assert len(renders) >= 2
    assert {(fn.concurrency_limit, fn.concurrency_id) for fn in renders} == {(1, "file-picker-render")}
    # the settings check and the estimate import torch's libraries on first use: they take turns (two threads
    # importing them at once got a partially initialized diffusers in CI)
    turns = {(fn.fn.__qualname__.rsplit(".", 1)[-1], fn.concurrency_limit, fn.concurrency_id)
             for fn in app.fns.values() if fn.fn and fn.fn.__qualname__.endswith(("do_check", "do_start", "do_resume",
                                                                                   "EstimateView.show"))}
    assert turns == {(name, 1, "training-check") for name in ("do_check", "do_start", "do_resume", "show")}
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = json.loads(response.read())
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert "Dataset" in labels
        assert {"scan-button", "scan-log", "scan-progress", "scan-stop", "ScanConfig-train_data_dir",
                "dataset-gallery", "caption-editor"} <= elem_ids
    finally:
        app.close()


def _poll_until(panel, run, state, timeout=60):
    deadline = time.time() + timeout
    updates = {}
    while time.time() < deadline:
        updates = panel.poll(run)
        run = updates[panel.run]
        if run["state"] == state:
            return run, updates
        time.sleep(0.1)
    raise AssertionError(f"run stayed {run['state']}")


def test_job_panel_start_follow_stop_and_reattach(tmp_path):
    import gradio as gr
    from PIL import Image

    from tabs.job_panel import JobPanel

    folder = tmp_path / "2_dogs"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (32, 32)).save(folder / f"{i}.png")
    with gr.Blocks():
        panel = JobPanel("scan")

    assert panel.reattach() and panel.poll(None) and panel.request_stop(None)  # never {}: gradio rejects it
    invalid = panel.launch({"train_data_dir": []})
    assert "Invalid settings" in invalid[panel.status] and panel.run not in invalid

    updates = panel.launch({"train_data_dir": [str(tmp_path)]})
    assert "core scan --config" in updates[panel.command]
    run, updates = _poll_until(panel, updates[panel.run], "done")
    assert updates[panel.finished] == run["run_dir"]
    assert "scan: done" in "\n".join(run["lines"]) and (run["step"], run["total"]) == (5, 5)
    assert "5/5 (100%)" in updates[panel.progress]

    updates = panel.launch({"train_data_dir": [str(tmp_path)]})
    stopping = panel.request_stop({**updates[panel.run], "state": "running"})
    assert "stopping" in stopping[panel.status]
    run, updates = _poll_until(panel, updates[panel.run], "stopped")
    assert "**stopped**" in updates[panel.status]

    reattached = panel.reattach()  # a fresh page: shows the newest run of the job
    assert reattached[panel.run]["run_dir"] == run["run_dir"]
    assert reattached[panel.finished] == run["run_dir"]


def test_preset_bar_save_as_load_save_delete(studio_home):
    import gradio as gr

    from core.config import ScanConfig
    from tabs.form import SchemaForm
    from tabs.preset_bar import PresetBar

    with gr.Blocks() as blocks:
        bar = PresetBar("scan")
        form = SchemaForm(ScanConfig)
        bar.wire(form, blocks)
    raw = form.show({"train_data_dir": ["/data/x", "/data/y"], "caption_extension": ".caption"})
    assert raw[form.names.index("train_data_dir")] == "/data/x\n/data/y"
    dropdown, message = bar.do_save_as("Two folders", *raw)
    assert "Saved **Two folders**" in message and dropdown.value == "Two folders"
    loaded = bar.do_load("Two folders")
    assert loaded[:-1] == raw
    changed = form.show({"train_data_dir": ["/data/z"]})
    assert "Saved" in bar.do_save("Two folders", *changed)[1]
    assert bar.do_load("Two folders")[form.names.index("train_data_dir")] == "/data/z"
    assert "exists already" in bar.do_save_as("Two folders", *changed)[1]
    assert "read-only" in bar.do_save("Thorough", *changed)[1]
    assert "cannot be deleted" in bar.do_delete("Thorough")[1]
    dropdown, message = bar.do_delete("Two folders")
    assert "Deleted" in message and "Two folders" not in [value for _, value in dropdown.choices]
