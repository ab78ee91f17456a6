"""In a browser: the Training page's LoRA section shows a row of sliders per block under each block lr weight
field; a typed curve moves them, moving one writes the numbers into the field."""
import pytest
from test_gui_browser import gui_url, laptop_page, show_field  # noqa: F401  (fixtures)

from core.config import TrainConfig
from tabs.training import KINDS

pytestmark = pytest.mark.slow


def test_block_weight_sliders_follow_the_field_and_write_it(laptop_page, screenshot):  # noqa: F811  (the fixture)
    page = laptop_page
    page.click("#tab-training-button")
    page.locator("#train-kind label").nth(KINDS.index("LoRA")).click()
    show_field(page, TrainConfig, "up_lr_weight")
    field = "#TrainConfig-up_lr_weight textarea, #TrainConfig-up_lr_weight input"
    page.fill(field, "linear")
    page.press(field, "Tab")
    last = "#TrainConfig-up_lr_weight-11 input[type=number]"
    page.wait_for_function(f"document.querySelector('{last}').value == '1'")
    assert page.input_value("#TrainConfig-up_lr_weight-0 input[type=number]") == "0"
    assert page.is_visible("#TrainConfig-up_lr_weight-sliders") and page.is_visible("#TrainConfig-mid_lr_weight-0")
    screenshot(page, "block-weight-sliders")

    first = "#TrainConfig-up_lr_weight-0 input[type=number]"
    page.fill(first, "2")
    page.press(first, "Tab")
    page.wait_for_function("document.querySelector('#TrainConfig-up_lr_weight textarea, "
                           "#TrainConfig-up_lr_weight input').value.startsWith('2,')")
    assert page.input_value(field) == "2,0.091,0.182,0.273,0.364,0.455,0.545,0.636,0.727,0.818,0.909,1"
