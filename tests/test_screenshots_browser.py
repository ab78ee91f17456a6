"""Every tab of the GUI at 1366x768, saved as screenshots for a reviewer (the folder is named at the end of
the test output), and what must be in the first screen of each."""
import pytest

from test_gui_browser import CHROMIUM_ARGS, chromium_path

TABS = ["dataset", "captioning", "cleaning", "buckets", "training", "tools", "runs"]


@pytest.fixture
def laptop_page(gui_url):
    """A page of the GUI in a 1366x768 window (the smallest laptop screen we design for)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.set_default_timeout(60_000)
        page.goto(gui_url)
        yield page
        browser.close()


def test_every_tab_at_1366x768(laptop_page, screenshot):
    page = laptop_page
    page.wait_for_selector("#tab-training-button")
    for index, tab in enumerate(TABS, start=1):
        page.click(f"#tab-{tab}-button")
        page.wait_for_selector(f"#tab-{tab}", state="visible")
        page.wait_for_timeout(400)  # let the tab's components lay out
        assert screenshot(page, f"{index:02d}-{tab}").stat().st_size > 10_000
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1366, f"the {tab} tab is {width} px wide: it scrolls sideways at 1366x768"
