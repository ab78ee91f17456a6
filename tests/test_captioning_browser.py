"""Captions from a vision-language model in the GUI at 1366x768: the Captioning tab's section, a preview on a few
images with the time per image, then the folder captioned with the summary; a screenshot for reviewers."""
from PIL import Image
from test_gui_browser import fill, gui_url, laptop_page  # noqa: F401  (fixtures)


def test_caption_a_folder_with_a_vision_language_model(laptop_page, tmp_path, screenshot):  # noqa: F811
    from tinyvlm_qwen import build_qwen2_5_vl

    page = laptop_page
    model = build_qwen2_5_vl(tmp_path / "Qwen2.5-VL-tiny")
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(["red", "green", "blue", "white", "black"]):
        Image.new("RGB", (40 + 8 * i, 48), colour).save(images / f"{colour}.png")

    page.click("#tab-captioning-button")
    page.click("#tab-captioning-vlm-button")
    fill(page, "VlmCaptionConfig-train_data_dir", str(images))
    fill(page, "VlmCaptionConfig-model_dir", str(model))
    fill(page, "VlmCaptionConfig-max_new_tokens", "12")
    page.click("#vlm_caption-preview-button")
    page.wait_for_selector("#vlm_caption-preview-message:has-text('s per image')")
    assert "Preview of 4 image(s): nothing was written." in page.inner_text("#vlm_caption-preview-message")
    assert not list(images.glob("*.txt"))
    screenshot(page, "captioning-vlm")

    page.click("#vlm_caption-button")
    page.wait_for_selector("#vlm_caption-summary:has-text('written 5')")
    assert len([p for p in images.glob("*.txt") if p.read_text(encoding="utf-8").strip()]) == 5
