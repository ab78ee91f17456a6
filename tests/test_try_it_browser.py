"""A newcomer's first ten minutes: on an empty install, one click on *Try it* builds the demo kit, makes it the
workspace, opens the Training tab with the CPU demo preset and starts training; the loss curve moves in the
side panel until the run ends with a model in the workspace's output folder."""
from test_gui_browser import gui_url, laptop_page  # noqa: F401  (fixtures)

from core import workspace
from core.dataset.demo_kit import kit_ready


def test_try_it_trains_the_demo_in_one_click(laptop_page, studio_home, screenshot):  # noqa: F811  (the fixture)
    page = laptop_page
    clicks = 0
    page.click("#try-it-button")  # the first page is the Dataset tab
    clicks += 1

    page.wait_for_selector("#live-status:has-text('train')", timeout=300_000)
    page.wait_for_function("+document.querySelector('#live-loss-summary .chart-summary')?.dataset.points > 2",
                           timeout=300_000)
    assert page.is_visible("#tab-training")  # the Training tab was opened for the person
    assert "CPU demo" in page.input_value("#train-preset input")
    screenshot(page, "try-it-training")
    assert clicks <= 5

    kit = studio_home / "demo"
    assert kit_ready(kit)
    saved = workspace.load()
    assert saved.value("model") == str(kit / "model") and saved.value("dataset") == [str(kit / "dataset")]
    page.wait_for_selector("#live-status:has-text('done')", timeout=600_000)
    assert (kit / "output" / "demo-finetune.safetensors").is_file()  # where the workspace says
