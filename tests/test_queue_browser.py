"""The queue from the GUI: a tagging and a training queued with Add to queue, the page reloaded while they run,
the Queue tab showing them progress to done, and their results on disk."""
from PIL import Image
from test_gui_browser import fill, gui_url, page, show_field, wait_value  # noqa: F401 (fixtures)

from core.config import TrainConfig


def test_queue_a_tagging_and_a_training_reload_and_see_them_finish(page, tmp_path):  # noqa: F811
    from test_tagger_wd14 import EXPECTED, RED, build_model

    from core.dataset.demo import build_demo

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

    page.click("#tab-training-button")
    page.click("#train-preset input")
    page.click("ul[role='listbox'] li:has-text('CPU demo')")
    show_field(page, TrainConfig, "output_name")
    wait_value(page, "TrainConfig-output_name", "'demo-finetune'")
    for name, value in (("pretrained_model_name_or_path", kit / "model"), ("train_data_dir", kit / "dataset"),
                        ("output_dir", tmp_path / "out")):
        show_field(page, TrainConfig, name)
        fill(page, f"TrainConfig-{name}", str(value))
    fill(page, "TrainConfig-max_train_steps", "30")
    page.click("#train-queue-button")
    page.wait_for_selector("#train-report:has-text('Queued as entry')")
    fill(page, "TrainConfig-max_train_steps", "999")  # a later edit does not change the queued job

    page.reload()
    page.click("#tab-queue-button", timeout=180_000)
    page.wait_for_selector("#queue-table:has-text('train')")
    page.wait_for_function("document.querySelector('#queue-table').innerText.split(/\\s+/).filter(word => word "
                           "=== 'done').length === 2", timeout=300_000, polling=1000)
    page.screenshot(path=str(tmp_path / "queue.png"))
    assert {p.read_text() for p in images.glob("*.txt")} == {EXPECTED[RED]}
    assert list((tmp_path / "out").glob("demo-finetune*"))
    from core.queue import store

    trained = next(e for e in store.read_queue().entries if e.job == "train")
    assert trained.values["max_train_steps"] == 30  # frozen when queued
