"""The Training page's subsets table in a real browser: import an sd-scripts dataset TOML into it, add, move and
remove rows, export it again, and Check settings reads the table."""
from pathlib import Path

from test_dataset_subsets import make_folder
from test_gui_browser import fill, gui_url, page, show_field  # noqa: F401 (fixtures)

from core.config import TrainConfig
from core.config.dataset_toml import read_dataset_config

TABLE = "#TrainConfig-subsets"
ROWS = f"{TABLE} div[role=row]"  # Gradio 6's table body: rows of grid cells (the header is a <tr>)


def cell_texts(tab, column: int) -> list[str]:
    """The text of one column of the table, row by row."""
    return tab.eval_on_selector_all(
        ROWS, f"rows => rows.map(r => (r.querySelectorAll('[role=gridcell]')[{column}]?.innerText || '').trim())")


def select_row(tab, index: int) -> None:
    tab.locator(ROWS).nth(index).locator("[role=gridcell]").nth(1).click()
    tab.keyboard.press("Escape")


def test_import_edit_and_export_the_subsets_table(page, tmp_path, screenshot):  # noqa: F811
    for name, count in (("alice", 2), ("bob", 1), ("reg", 2)):
        make_folder(tmp_path / name, count)
    source = tmp_path / "dataset.toml"
    source.write_text("[general]\nbatch_size = 3\n[[datasets]]\nresolution = 64\n[[datasets.subsets]]\n"
                      "image_dir = 'alice'\nnum_repeats = 4\nshuffle_caption = true\n"
                      "[[datasets.subsets]]\nimage_dir = 'bob'\n[[datasets.subsets]]\nimage_dir = 'reg'\n"
                      "is_reg = true\n", encoding="utf-8")
    page.click("#tab-training-button")
    show_field(page, TrainConfig, "subsets")
    fill(page, "subsets-toml-path", str(source))
    page.click("#subsets-toml-import")
    page.wait_for_selector("#subsets-toml-message:has-text('Imported 3 subset(s)')")
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 3")
    assert [Path(text).name for text in cell_texts(page, 0)] == ["alice", "bob", "reg"]
    assert "train_batch_size set to the datasets' batch_size 3" in page.inner_text("#subsets-toml-message")
    screenshot(page.locator(TABLE).locator(".."), "training-subsets-table")

    select_row(page, 1)
    page.click(f"{TABLE}-up")
    page.wait_for_function(f"document.querySelector('{ROWS} [role=gridcell]').innerText.includes('bob')")
    page.click(f"{TABLE}-add")
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 4")
    select_row(page, 1)  # alice, now second
    page.click(f"{TABLE}-remove")
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === 3")

    target = tmp_path / "exported.toml"
    fill(page, "subsets-toml-path", str(target))
    page.click("#subsets-toml-export")
    page.wait_for_selector("#subsets-toml-message:has-text('Wrote 2 subset(s)')")  # the empty added row is skipped
    exported = read_dataset_config(target)
    assert [Path(s.image_dir).name for s in exported.subsets] == ["bob", "reg"] and exported.batch_size == 3
    assert exported.subsets[1].is_reg and exported.subsets[0].resolution == "64,64"
    page.click("#subsets-toml-export")  # never over an existing file
    page.wait_for_selector("#subsets-toml-message:has-text('already exists')")

    fill(page, "subsets-toml-path", str(tmp_path / "missing.toml"))
    page.click("#subsets-toml-import")
    page.wait_for_selector("#subsets-toml-message:has-text('file not found')")
