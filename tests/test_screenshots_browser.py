"""Every tab of the GUI at 1366x768, saved as screenshots for a reviewer (the folder is named at the end of
the test output), and what must be in the first screen of each."""
from test_gui_browser import gui_url, laptop_page  # noqa: F401  (fixtures)

TABS = ["dataset", "captioning", "cleaning", "buckets", "training", "models", "tools", "runs", "queue"]


def test_every_tab_at_1366x768(laptop_page, screenshot):  # noqa: F811  (the fixture)
    page = laptop_page
    page.wait_for_selector("#tab-training-button")
    for index, tab in enumerate(TABS, start=1):
        page.click(f"#tab-{tab}-button")
        page.wait_for_selector(f"#tab-{tab}", state="visible")
        page.wait_for_timeout(400)  # let the tab's components lay out
        assert screenshot(page, f"{index:02d}-{tab}").stat().st_size > 10_000
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1366, f"the {tab} tab is {width} px wide: it scrolls sideways at 1366x768"
