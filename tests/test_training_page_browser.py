"""The Training page in a real browser at 1366x768: the first screen, conditions, presets with hidden fields,
the settings search and the kind of training."""
import json
import os
from pathlib import Path

import pytest
from conftest import _free_port
from test_gui_browser import CHROMIUM_ARGS, chromium_path, fill, served_gui, show_field, wait_value

from core.config import TrainConfig, field_meta
from tabs.form import section_id
from tabs.training import KINDS

WIDTH, HEIGHT = 1366, 768


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """The STUDIO_HOME of the module's one GUI."""
    return tmp_path_factory.mktemp("studio-home-training-page")


@pytest.fixture(scope="module")
def browser(shared_home):
    """One GUI and one chromium for the module's tests (they change only their own page's form, and what they
    save they name apart): each test gets a new page, so a new session with the form as it starts."""
    from playwright.sync_api import sync_playwright

    with served_gui(shared_home, _free_port()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser, url
        browser.close()


@pytest.fixture
def page(browser):
    browser, url = browser
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.click("#tab-training-button", timeout=180_000)  # the first render of the page, on a busy machine
    page.wait_for_selector("#train-button")
    yield page
    context.close()


def open_section(page, name: str) -> None:
    """Select the sub-tab of TrainConfig field `name` (and open its "More settings" when it is advanced)."""
    show_field(page, TrainConfig, name)


def choose(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.click(f"ul[role='listbox'] li:text-is('{option}')")


def pick_kind(page, kind: str) -> None:
    page.locator("#train-kind label").nth(KINDS.index(kind)).click()


def box(page, selector: str) -> dict:
    return page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); "
                                           "return {top: r.top, bottom: r.bottom, height: r.height}; }")


def in_first_screen(page, selector: str) -> bool:
    rect = box(page, selector)
    return rect["height"] > 0 and 0 <= rect["top"] and rect["bottom"] <= HEIGHT


def test_the_essentials_check_and_start_fit_the_first_screen(page, tmp_path):
    essentials = [n for n in TrainConfig.model_fields if field_meta(TrainConfig, n)["essential"] and n != "train_lora"]
    assert len(essentials) >= 7
    assert page.evaluate("window.scrollY") == 0
    page.wait_for_selector("#TrainConfig-learning_rate:has-text('learning_rate')")  # the name beside the label
    outside = [s for s in ["#train-preset", "#train-kind", "#train-search", "#train-check", "#train-button",
                           *(f"#TrainConfig-{n}" for n in essentials if page.is_visible(f"#TrainConfig-{n}"))]
               if not in_first_screen(page, s)]
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "training-page-1366x768.png"
    page.screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    assert not outside, f"below the first screen at {WIDTH}x{HEIGHT}: {outside}"


def test_a_dependency_hides_and_restores_a_field(page):
    open_section(page, "loss_type")
    assert not page.is_visible("#TrainConfig-huber_c")  # l2 by default
    note = f"#TrainConfig-section-{section_id(field_meta(TrainConfig, 'huber_c')['group'])} .sf-hidden-note"
    page.wait_for_selector(f"{note}:has-text('huber or smooth_l1')")
    choose(page, "TrainConfig-loss_type", "huber")
    page.wait_for_selector("#TrainConfig-huber_c", state="visible")
    fill(page, "TrainConfig-huber_c", "0.3")
    choose(page, "TrainConfig-loss_type", "l2")
    page.wait_for_selector("#TrainConfig-huber_c", state="hidden")
    choose(page, "TrainConfig-loss_type", "smooth_l1")
    wait_value(page, "TrainConfig-huber_c", "0.3", number=True)  # its value was kept while hidden


def test_a_preset_with_hidden_fields_round_trips_byte_for_byte(page, shared_home):
    open_section(page, "loss_type")
    choose(page, "TrainConfig-loss_type", "huber")
    fill(page, "TrainConfig-huber_c", "0.3")
    choose(page, "TrainConfig-loss_type", "l2")
    page.wait_for_selector("#TrainConfig-huber_c", state="hidden")
    fill(page, "train-preset-name", "Hidden huber")
    page.click("#train-preset-save-as")
    page.wait_for_selector("#train-preset-message:has-text('Saved Hidden huber')")
    path = shared_home / "presets" / "user" / "train" / "hidden-huber.json"
    first = path.read_bytes()
    assert json.loads(first)["values"]["huber_c"] == 0.3

    page.click("#train-preset-defaults")
    page.wait_for_selector("#train-preset-message:has-text('Defaults restored')")
    choose(page, "train-preset", "Hidden huber")
    page.wait_for_selector("#train-preset-message:has-text('Loaded Hidden huber')")
    page.click("#train-preset-save")
    page.wait_for_selector("#train-preset-message:has-text('Saved Hidden huber')")
    assert path.read_bytes() == first


def test_search_finds_min_snr_gamma_from_snr_and_shows_it(page):
    page.fill("#train-search :is(input, textarea)", "snr")
    result = page.wait_for_selector("#train-search-results label:has-text('min_snr_gamma')")
    result.click()
    tab = section_id(field_meta(TrainConfig, "min_snr_gamma")["group"])
    page.wait_for_selector(f"#TrainConfig-section-{tab}-button[aria-selected='true']")
    page.wait_for_selector("#TrainConfig-min_snr_gamma", state="visible")
    page.wait_for_function("(() => { const r = document.querySelector('#TrainConfig-min_snr_gamma')"
                           f".getBoundingClientRect(); return r.top >= 0 && r.bottom <= {HEIGHT}; }})()")


def test_the_kind_of_training_drives_lora_and_the_class_folder(page):
    pick_kind(page, "DreamBooth")
    page.wait_for_selector("#train-kind-note:has-text('class images')")
    page.wait_for_selector("#TrainConfig-section-dreambooth-button[aria-selected='true']")
    fill(page, "TrainConfig-class_data_dir", "/data/class dogs")
    page.wait_for_selector("#TrainConfig-class_prompt", state="visible")  # applies once a class folder is set
    pick_kind(page, "LoRA")
    wait_value(page, "TrainConfig-class_data_dir", "''")
    page.click("#TrainConfig-section-training-button")
    page.wait_for_function("document.querySelector('#TrainConfig-train_lora input').checked")
    pick_kind(page, "DreamBooth + LoRA")
    page.click("#TrainConfig-section-dreambooth-button")
    wait_value(page, "TrainConfig-class_data_dir", "'/data/class dogs'")

    page.click("#train-preset-defaults")  # the radio follows the values a preset or the defaults set
    page.wait_for_function("document.querySelectorAll('#train-kind input')[0].checked")


def test_the_estimate_shows_a_verdict_and_applies_a_saver_in_one_click(page, screenshot):
    choose(page, "train-preset", "SD 1.5 full fine-tune, 24 GB GPU (built-in)")
    page.wait_for_selector("#train-preset-message:has-text('Loaded')")
    page.click("#train-estimate-section >> text=Memory and time estimate")  # opens the section
    choose(page, "train-estimate-card", "8 GB")
    estimate = page.wait_for_selector("#train-estimate:has-text('does not fit')", timeout=180_000)
    assert "a card of 8 GB" in estimate.inner_text() and "optimizer state (AdamW)" in estimate.inner_text()
    page.locator("#train-estimate").scroll_into_view_if_needed()
    screenshot(page, "training-estimate")
    saver = page.locator("[id^='train-saver-']:has-text('8-bit optimizer')")
    saver.click()
    wait_value(page, "TrainConfig-optimizer_type", "'AdamW8bit'")
    page.wait_for_selector("#train-estimate:has-text('optimizer state (AdamW8bit)')", timeout=180_000)
    page.click("#train-check")  # Check settings shows the estimate too
    page.wait_for_selector("#train-report:has-text('problem')")
    page.wait_for_selector("#train-estimate:has-text('Memory estimate')")
