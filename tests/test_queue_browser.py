"""The queue from the GUI: a dataset's whole preparation and training queued in one click and a second training with
Add to queue, the page reloaded while they run, the browser closed, and everything found done; a waiting entry
edited in its form, then its run opened."""
import shutil
from pathlib import Path

from PIL import Image
from test_gui_browser import cpu_demo_training, fill, gui_url, page  # noqa: F401 (fixtures)
from test_workspace_browser import choose, wait_check

from core.queue import store


def test_queue_a_preparation_and_two_trainings_close_the_browser_and_find_them_done(page, tmp_path,  # noqa: F811
                                                                                   screenshot):
    from test_queue import wait_for
    from test_tagger_wd14 import build_model

    from core.dataset.demo import build_demo

    tagger = build_model(tmp_path / "tagger")
    kit = tmp_path / "kit"
    build_demo(kit, arch="sd1", num_images=4, seed=2)
    dataset = shutil.copytree(kit / "dataset", tmp_path / "dataset", ignore=shutil.ignore_patterns("*.txt"))
    out = tmp_path / "out"

    # the settings as set on the tabs: the tagger on the Captioning tab, the CPU demo training (30 steps)
    page.click("#tab-captioning-button")
    fill(page, "TagConfig-model_dir", str(tagger))
    cpu_demo_training(page, kit, out, steps=30)
    for slot, value in (("dataset", dataset), ("model", kit / "model"), ("output", out)):
        choose(page, slot, str(value))
    wait_check(page, "model", "SD 1")
    page.click("#tab-queue-button")
    page.click("#queue-chain-button")
    page.wait_for_selector("#queue-message:has-text('Queued 4 jobs')")
    page.click("#tab-training-button")
    fill(page, "TrainConfig-output_name", "second")
    page.click("#train-queue-button")
    page.wait_for_selector("#train-report:has-text('Queued as entry')")
    fill(page, "TrainConfig-max_train_steps", "999")  # a later edit does not change the queued job

    page.reload()
    page.click("#tab-queue-button", timeout=180_000)
    # running, or already done where the machine was quick (CI10: the first entries ended before the table showed)
    page.wait_for_selector("#queue-table [role=gridcell]:has-text('running'), "
                           "#queue-table [role=gridcell]:has-text('done')", timeout=120_000)
    screenshot(page, "queue-running")
    browser, url = page.context.browser, page.url
    page.close()  # the browser closed: the queue goes on
    wait_for(lambda: [e.status for e in store.read_queue().entries] == ["done"] * 5, timeout=600)

    again = browser.new_page(viewport={"width": 1400, "height": 1800})
    again.goto(url)
    again.click("#tab-queue-button", timeout=180_000)
    again.wait_for_function("document.querySelector('#queue-table').innerText.split(/\\s+/).filter(word => word "
                            "=== 'done').length === 5", timeout=60_000, polling=1000)
    screenshot(again, "queue-done")
    assert all(image.with_suffix(".txt").is_file() for image in dataset.rglob("*.png"))  # tagged
    assert (out / "demo-finetune.safetensors").is_file() and (out / "second.safetensors").is_file()
    jobs = [(e.job, e.values.get("max_train_steps")) for e in store.read_queue().entries]
    assert jobs == [("tag", None), ("clean", None), ("cache", None), ("train", 30), ("train", 30)]  # frozen


def test_edit_a_waiting_entry_in_its_form_then_open_its_run(page, tmp_path, small_dataset):  # noqa: F811
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (40, 32), (0, 0, 255)).save(other / "blue.png")
    store.pause()  # it waits while it is edited
    fill(page, "ScanConfig-train_data_dir", str(small_dataset))
    page.click("#scan-queue-button")
    page.wait_for_selector("#scan-queued:has-text('Queued as entry')")

    page.click("#tab-queue-button")
    page.click("#queue-table [role=gridcell]:has-text('scan:')")
    page.wait_for_selector("#queue-selected:has-text('Selected: entry')")
    page.click("#queue-edit")
    page.wait_for_selector("#scan-queue-button:has-text('Save to entry')")  # the Dataset tab, its form
    page.wait_for_selector("#scan-queued:has-text('Editing')")
    fill(page, "ScanConfig-train_data_dir", str(other))
    page.click("#scan-queue-button")
    page.wait_for_selector("#scan-queued:has-text('Saved to entry')")
    page.wait_for_selector("#scan-queue-button:text-is('Add to queue')")
    (edited,) = store.read_queue().entries
    assert edited.values["train_data_dir"] == [str(other)] and edited.status == "waiting"

    page.click("#tab-queue-button")
    page.click("#queue-resume")
    page.wait_for_function("document.querySelector('#queue-table').innerText.split(/\\s+/).includes('done')",
                           timeout=120_000, polling=1000)
    page.click("#queue-table [role=gridcell]:has-text('scan:')")
    page.click("#queue-open-run")
    page.wait_for_selector("#run-header:has-text('scan · done')")
    assert Path(store.read_queue().entries[0].run_dir).name in page.inner_text("#run-header")
