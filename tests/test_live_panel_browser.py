"""The run side panel in a real browser at 1366x768: a scan started on the Dataset tab and a training started
from outside the GUI show in it while the person is on other tabs; Stop works from it; each end is announced
(a toast, and a browser notification when the page is in the background). Screenshots go to $SCREENSHOT_DIR
(else the test's tmp folder)."""
import os
from pathlib import Path

from test_gui_browser import REPO, fill, gui_url, laptop_page  # noqa: F401  (fixtures)

from core.config.presets import load_preset
from core.dataset.demo import build_demo, write_dataset
from core.jobs.runner import run_state, start_job, stop_job

# A stand-in for the browser's Notification API: granted, and the page in the background.
FAKE_NOTIFICATIONS = """() => {
  window.shown = [];
  window.Notification = class { constructor(title, options) { window.shown.push(options.body); } };
  window.Notification.permission = "default";
  window.Notification.requestPermission = async () => (window.Notification.permission = "granted");
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
}"""


def toast(page, text: str) -> None:
    page.wait_for_function(f"[...document.querySelectorAll('.toast-wrap')].some(t => t.innerText.includes({text!r}))")


def live_log_has(page, text: str, timeout: int = 240_000) -> None:
    page.wait_for_function(f"document.querySelector('#live-log textarea').value.includes({text!r})", timeout=timeout)


def test_the_side_panel_follows_runs_from_any_tab_stops_them_and_announces_their_end(laptop_page, tmp_path,  # noqa: F811
                                                                                      monkeypatch):
    page = laptop_page
    shots = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {shots}")
    page.evaluate(FAKE_NOTIFICATIONS)
    assert "open" not in page.get_attribute("#live-panel", "class").split()  # closed until a run starts
    page.click("#live-panel .toggle-button", no_wait_after=True)
    page.click("#live-notify")
    page.wait_for_selector("#live-notify:has-text('Notifications on')")
    page.click("#live-panel .toggle-button", no_wait_after=True)
    page.wait_for_selector("#live-panel:not(.open)")
    page.screenshot(path=str(shots / "live-0-closed.png"))

    dataset = tmp_path / "photos"
    write_dataset(dataset, num_images=12, seed=3)
    fill(page, "ScanConfig-train_data_dir", str(dataset))
    page.click("#scan-button")
    page.click("#tab-captioning-button")
    toast(page, "finished")  # first: a toast lasts 10 s
    page.wait_for_selector("#live-panel.open")  # opened by itself
    live_log_has(page, "scan: done")
    page.wait_for_selector("#live-status:has-text('scan')")
    page.wait_for_selector("#live-progress:has-text('12/12')")
    page.wait_for_function("window.shown.some(body => body.includes('scan run') && body.includes('finished'))")
    page.screenshot(path=str(shots / "live-1-scan-done-on-captioning.png"))

    kit = tmp_path / "kit"
    build_demo(kit, arch="sd1", num_images=8, seed=4)
    preset = load_preset(REPO / "presets" / "train" / "cpu-demo.json", "train", builtin=True)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = start_job("train", {**preset.values, "pretrained_model_name_or_path": str(kit / "model"),
                                  "train_data_dir": [str(kit / "dataset")], "output_dir": str(tmp_path / "out"),
                                  "max_train_steps": 5000})  # started outside the GUI: as from a terminal
    try:
        page.click("#tab-runs-button")
        page.wait_for_selector("#live-status:has-text('train')")
        live_log_has(page, "training 5000 steps", 180_000)
        page.wait_for_function("+document.querySelector('#live-progress .job-progress')?.dataset.step > 0")
        page.wait_for_function("+document.querySelector('#live-loss-summary .chart-summary')?.dataset.points > 3")
        page.wait_for_selector("#live-samples img", timeout=180_000)
        page.wait_for_selector("#live-loss-chart canvas, #live-loss-chart svg")
        page.screenshot(path=str(shots / "live-2-training-on-runs-tab.png"))
        assert "/5000" in page.inner_text("#live-progress")

        page.click("#live-stop")
        toast(page, "was stopped")
        page.wait_for_selector("#live-status:has-text('stopped')")
        page.wait_for_function("window.shown.some(body => body.includes('was stopped'))")
        assert run_state(run_dir) == "stopped"
        page.screenshot(path=str(shots / "live-3-training-stopped.png"))
    finally:
        stop_job(run_dir)
