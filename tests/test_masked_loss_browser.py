"""Masks in the Dataset tab, in a real browser at 1366x768: a scan with a mask folder lists the image whose
mask is missing, and a selected image shows its mask over it; a screenshot for reviewers."""
import numpy as np
from PIL import Image
from test_gui_browser import fill, gui_url, laptop_page, show_field, wait_log  # noqa: F401  (fixtures)

from core.config import ScanConfig


def test_scan_with_a_mask_folder_shows_problems_and_the_mask_over_an_image(laptop_page, tmp_path, screenshot):  # noqa: F811
    page = laptop_page
    data, masks = tmp_path / "images", tmp_path / "masks"
    data.mkdir()
    masks.mkdir()
    y, x = np.mgrid[0:192, 0:256]
    subject = (x - 128) ** 2 + (y - 96) ** 2 < 60 ** 2  # a disc on a striped background
    image = np.where(subject[..., None], [40, 90, 220], np.where((x // 16 % 2)[..., None], [200, 180, 60],
                                                                 [90, 140, 90])).astype(np.uint8)
    mask = (subject * 255).astype(np.uint8)
    for name in ("subject", "other", "unmasked"):
        Image.fromarray(image).save(data / f"{name}.png")
    for name in ("subject", "other"):
        Image.fromarray(mask).save(masks / f"{name}.png")

    fill(page, "ScanConfig-train_data_dir", str(data))
    show_field(page, ScanConfig, "conditioning_data_dir")
    fill(page, "ScanConfig-conditioning_data_dir", str(masks))
    page.click("#scan-button")
    wait_log(page, "scan", "scan: done")
    page.wait_for_selector("#scan-report:has-text('Masks')")
    assert "1 missing" in page.inner_text("#scan-report")
    page.wait_for_selector("#scan-problems:has-text('no mask for it')")

    page.click("#dataset-gallery img >> nth=1")  # other.png, then subject.png, unmasked.png by name
    page.wait_for_selector("#mask-overlay img")
    page.wait_for_selector("text=tinted: the part the loss ignores")
    page.locator("#mask-overlay").scroll_into_view_if_needed()
    screenshot(page, "dataset-mask-overlay")
