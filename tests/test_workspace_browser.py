"""The workspace bar in a real browser at 1366x768: chosen once, every tab's form follows, restored after a
GUI restart, a folder chosen in the picker lands in the field, a bad path is answered beside it."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_gui_browser import CHROMIUM_ARGS, chromium_path, reopen, start_gui, wait_value


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str) -> None:
        path = folder / f"workspace-{name}.png"
        page.screenshot(path=str(path))
        print(f"screenshot: {path}")

    return shot


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#workspace-bar")
    return page


def choose(page, slot: str, value: str) -> None:
    """Type a path into a workspace field as a user does (then Enter)."""
    page.fill(f"#workspace-{slot} input", value)
    page.keyboard.press("Enter")


def wait_field(page, elem_id: str, expected: str, section: str | None = None) -> None:
    """Wait until a form field shows `expected`; `section`: the form's sub-tab that holds it (clicked first)."""
    if section and not page.query_selector(f"#{elem_id}"):
        page.click(f"#{section}-button")
    wait_value(page, elem_id, repr(expected))


def wait_check(page, slot: str, text: str) -> None:
    page.wait_for_selector(f"#workspace-{slot}-check :text('{text}')")


def test_set_once_every_tab_follows_and_a_restart_restores_it(browser, studio_home, free_port, tmp_path, shots):
    from core.dataset.demo import build_demo

    kit = tmp_path / "kit"
    build_demo(kit, arch="sd1", num_images=4, seed=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    gui = start_gui(port, studio_home / "gui.log")
    try:
        page = open_page(browser, url)
        assert page.eval_on_selector("#workspace-bar", "e => e.getBoundingClientRect().height") <= 110
        choose(page, "dataset", str(kit / "dataset"))
        wait_check(page, "dataset", "4 images")
        choose(page, "model", str(kit / "model.safetensors"))
        wait_check(page, "model", "SD 1.x · single file")
        choose(page, "output", str(tmp_path / "out"))
        wait_check(page, "output", "will be created")
        shots(page, "set")
        wait_value(page, "ScanConfig-train_data_dir", repr(str(kit / "dataset")))
        page.click("#tab-buckets-button")
        wait_value(page, "BucketConfig-train_data_dir", repr(str(kit / "dataset")))
        page.click("#tab-training-button")
        wait_field(page, "TrainConfig-train_data_dir", str(kit / "dataset"), "TrainConfig-section-data-captions")
        wait_field(page, "TrainConfig-pretrained_model_name_or_path", str(kit / "model.safetensors"),
                   "TrainConfig-section-model")
        wait_field(page, "TrainConfig-output_dir", str(tmp_path / "out"), "TrainConfig-section-saving")
        shots(page, "training")

        choose(page, "model", str(kit / "dataset" / "nothing.safetensors"))
        wait_check(page, "model", "not found: ")
        choose(page, "output", str(kit / "model.safetensors"))
        wait_check(page, "output", "is a file: choose a folder")
        shots(page, "bad-input")
        assert "✗" in page.inner_text("#workspace-output-check")
        choose(page, "model", str(kit / "model.safetensors"))
        choose(page, "output", str(tmp_path / "out"))
        wait_check(page, "output", "will be created")
    finally:
        gui.terminate()
        gui.wait(timeout=20)
    gui = start_gui(port, studio_home / "gui.log")
    try:
        reopen(page, url)
        wait_check(page, "model", "SD 1.x · single file")
        assert page.input_value("#workspace-dataset input") == str(kit / "dataset")
        wait_value(page, "ScanConfig-train_data_dir", repr(str(kit / "dataset")))
        page.click("#tab-training-button")
        wait_field(page, "TrainConfig-pretrained_model_name_or_path", str(kit / "model.safetensors"),
                   "TrainConfig-section-model")
        shots(page, "restored")
    finally:
        gui.terminate()
        gui.wait(timeout=20)
    assert "Traceback" not in (studio_home / "gui.log").read_text(errors="replace")


def test_a_folder_chosen_in_the_picker_lands_in_the_field(browser, studio_home, free_port, tmp_path, shots):
    from core.dataset.demo import write_dataset

    write_dataset(tmp_path / "pics" / "5_cat", num_images=3, seed=1)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    port = free_port()
    gui = start_gui(port, studio_home / "gui.log")
    try:
        page = open_page(browser, f"http://127.0.0.1:{port}/")
        choose(page, "output", str(tmp_path / "pics" / "5_cat"))  # the picker opens where the value is
        wait_check(page, "output", "writable")
        page.click("#workspace-dataset-browse")
        page.wait_for_selector("#picker-explorer")
        page.click("#picker-up")  # to the home folder's parent and back down: Look in follows
        page.fill("#picker-look-in input", str(tmp_path))
        page.keyboard.press("Enter")
        page.wait_for_selector("#picker-explorer :text('pics')")
        shots(page, "picker")
        page.click("#picker-use")
        page.wait_for_selector("#picker-message :text('Select a file or folder first')")
        page.click("#picker-explorer li:has-text('notes.txt') input[type=checkbox]")
        page.click("#picker-use")
        page.wait_for_selector("#picker-message :text('is a file: choose a folder')")
        page.fill("#picker-look-in input", str(tmp_path / "pics"))
        page.keyboard.press("Enter")
        page.wait_for_selector("#picker-explorer :text('5_cat')")
        page.click("#picker-use-folder")
        wait_check(page, "dataset", "3 images · repeats: 5_cat ×5")
        assert page.input_value("#workspace-dataset input") == str(tmp_path / "pics")
        assert not page.is_visible("#picker")
        time.sleep(0.5)
        shots(page, "picked")
    finally:
        gui.terminate()
        gui.wait(timeout=20)
