"""The queue from the GUI: a tagging and a training queued with Add to queue, the page reloaded while they run,
the Queue tab showing them progress to done, and their results on disk."""
from pathlib import Path

from PIL import Image
from test_gui_browser import cpu_demo_training, fill, gui_url, page  # noqa: F401 (fixtures)


def test_queue_a_tagging_and_a_training_reload_and_see_them_finish(page, tmp_path, screenshot):  # noqa: F811
    from test_tagger_wd14 import EXPECTED, RED, build_model

    from core.dataset.demo import build_demo
    from core.queue import store

    tagger = build_model(tmp_path / "tagger")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 32), RED).save(images / f"red {i}.png")
    kit = tmp_path / "kit"
    build_demo(kit, arch="sd1", num_images=4, seed=2)

    page.click("#tab-captioning-button")
    fill(page, "TagConfig-train_data_dir", str(images))
    fill(page, "TagConfig-model_dir", str(tagger))
    page.click("#tag-queue-button")
    page.wait_for_selector("#tag-queued:has-text('Queued as entry')")

    cpu_demo_training(page, kit, tmp_path / "out", steps=30)
    page.click("#train-queue-button")
    page.wait_for_selector("#train-report:has-text('Queued as entry')")
    fill(page, "TrainConfig-max_train_steps", "999")  # a later edit does not change the queued job

    page.reload()
    page.click("#tab-queue-button", timeout=180_000)
    page.wait_for_selector("#queue-table:has-text('train')")
    page.wait_for_function("document.querySelector('#queue-table').innerText.split(/\\s+/).filter(word => word "
                           "=== 'done').length === 2", timeout=300_000, polling=1000)
    screenshot(page, "queue-done")
    assert {p.read_text() for p in images.glob("*.txt")} == {EXPECTED[RED]}
    assert list((tmp_path / "out").glob("demo-finetune*"))
    trained = next(e for e in store.read_queue().entries if e.job == "train")
    assert trained.values["max_train_steps"] == 30  # frozen when queued


def test_edit_a_waiting_entry_in_its_form_then_open_its_run(page, tmp_path, small_dataset):  # noqa: F811
    from core.queue import store

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
