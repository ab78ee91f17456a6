"""The Models tab and the offers of a missing model, in a real browser at 1366x768: an AUTOMATIC1111 install's
checkpoint picked from the library into the workspace; a WD14 tagger downloaded from the Captioning tab's offer,
then a VAE and a base model (SD 1.5, used as the workspace's model) from the catalogue, all from a fake Hugging
Face Hub (tests/fakehub.py) on 127.0.0.1."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fakehub import fake_hub  # noqa: F401  (the fixture)
from safetensors.numpy import save
from test_gui_browser import fill, gui_url, laptop_page, show_field, wait_log, wait_value  # noqa: F401  (fixtures)
from test_models_tab import write_checkpoint
from test_tagger_wd14 import build_model

from core import workspace
from core.config import TagConfig
from core.filenames import WD14_FILES


def test_a_checkpoint_of_an_a1111_install_becomes_the_base_model(laptop_page, tmp_path, screenshot):  # noqa: F811
    webui = tmp_path / "stable-diffusion-webui"
    checkpoint = write_checkpoint(webui / "models" / "Stable-diffusion" / "tiny-sd1.safetensors",
                                  {"ss_learning_rate": "0.0001", "ss_network_dim": "16"})
    (webui / "models" / "Lora").mkdir()
    (webui / "models" / "Lora" / "broken.safetensors").write_text("not a model")
    (webui / "models" / "VAE").mkdir()
    page = laptop_page

    page.click("#workspace-model-check a[data-go='library']")  # the offer under an empty base model
    page.wait_for_selector("#models-summary:has-text('0 models in 1 folder')")  # scanned as the tab opened
    page.click("#models-folders >> text=Library folders")
    page.click("#models-folder-browse")  # the folder picked with the file picker
    page.fill("#library-picker-look-in input", str(tmp_path))
    page.keyboard.press("Enter")
    page.wait_for_selector("#library-picker-explorer :text('stable-diffusion-webui')")
    page.fill("#library-picker-look-in input", str(webui))
    page.keyboard.press("Enter")
    page.wait_for_selector("#library-picker-explorer :text('models')")
    page.click("#library-picker-use-folder")
    wait_value(page, "models-folder", repr(str(webui)))
    page.click("#models-folder-add")
    page.wait_for_selector("#models-folder-message:has-text('Added 3 folders of the AUTOMATIC1111 / Forge install: "
                           "Stable-diffusion, Lora, VAE.')")
    page.wait_for_selector("#models-summary:has-text('2 models in 4 folders · 1 with a problem')")
    page.wait_for_selector("#models-table [role=gridcell]:has-text('not a safetensors file')")  # listed, not hidden

    page.click("#models-table [role=gridcell]:has-text('tiny-sd1')")
    page.wait_for_selector("#model-details:has-text('checkpoint · SD 1.x · fp16 · safetensors')")
    page.wait_for_selector("#model-use-base", state="visible")
    assert not page.is_visible("#model-use-tagger")
    page.click("#model-metadata-box >> text=Metadata (2)")
    page.wait_for_selector("#model-metadata :text('ss_network_dim')")
    screenshot(page, "models-library")
    page.click("#workspace-model input")  # the workspace offers the library's models
    page.wait_for_selector(f"ul[role=listbox] li:has-text('{checkpoint.name}')")
    page.keyboard.press("Escape")

    page.click("#model-use-base")
    page.wait_for_selector("#workspace-model-check :text('SD 1.x · single file')")
    assert page.input_value("#workspace-model input") == str(checkpoint)
    assert not page.is_visible("#workspace-model-check a[data-go='library']")  # no offer once a model is set
    assert workspace.load().model == str(checkpoint)


@pytest.fixture
def hub_models(fake_hub, tmp_path):  # noqa: F811
    """The catalogue's wd-vit-tagger-v3 (a tiny ONNX tagger), SD 1.5 (a tiny single file with SD 1.x's names) and
    SDXL fp16-fix VAE (a tiny diffusers VAE)."""
    tagger = build_model(tmp_path / "tiny-tagger")
    fake_hub.add_repo("SmilingWolf/wd-vit-tagger-v3", {**{n: (tagger / n).read_bytes() for n in WD14_FILES},
                                                       "README.md": b"# tiny\n"})
    vae = {"config.json": json.dumps({"_class_name": "AutoencoderKL", "scaling_factor": 0.13025}).encode(),
           "diffusion_pytorch_model.safetensors": save({"encoder.conv_in.weight": np.zeros((64, 64), np.float16)})}
    fake_hub.add_repo("madebyollin/sdxl-vae-fp16-fix", vae)
    sd15 = write_checkpoint(tmp_path / "tiny-sd15.safetensors")
    fake_hub.add_repo("stable-diffusion-v1-5/stable-diffusion-v1-5",
                      {"v1-5-pruned-emaonly.safetensors": sd15.read_bytes()})
    return tagger


# hub_models (and with it fake_hub) before laptop_page: HF_ENDPOINT is set before the GUI starts
def test_a_tagger_from_the_captioning_offer_and_a_base_model_from_the_catalogue(hub_models, laptop_page,  # noqa: F811
                                                                          studio_home, screenshot):
    page = laptop_page
    page.click("#tab-captioning-button")
    page.wait_for_selector("#tagger-offer:has-text('No WD14 tagger chosen yet')")
    screenshot(page, "captioning-tagger-offer")
    page.click("#tagger-download")
    folder = studio_home / "models" / "taggers" / "wd-vit-tagger-v3"
    page.wait_for_selector("#tagger-offer-message:has-text('the tagger folder is filled')")
    show_field(page, TagConfig, "model_dir")
    wait_value(page, "TagConfig-model_dir", repr(str(folder)))
    assert not page.is_visible("#tagger-offer")
    assert sorted(p.name for p in folder.iterdir()) == sorted(WD14_FILES)
    assert all((folder / n).read_bytes() == (hub_models / n).read_bytes() for n in WD14_FILES)

    page.click("#tab-models-button")
    page.click("#tab-models-download-button")
    page.wait_for_selector("#catalogue-table [role=gridcell]:has-text('downloaded')")  # the tagger, found there
    page.click("#catalogue-table [role=gridcell]:has-text('SDXL VAE, fp16 fix')")
    page.click("#catalogue-download:has-text('Download SDXL VAE, fp16 fix')")
    wait_log(page, "download", "2 file(s) downloaded", timeout=180_000)
    page.wait_for_selector("#download-progress:has-text('KiB (100%)')")  # progress in bytes
    page.wait_for_selector("#download-status:has-text('done')")
    page.wait_for_function("[...document.querySelectorAll('#catalogue-table [role=gridcell]')].filter(cell => "
                           "cell.innerText.trim() === 'downloaded').length === 2")  # once the library is scanned
    screenshot(page, "models-download")
    page.click("#tab-models-library-button")  # the library was scanned again: the new VAE is selected
    page.wait_for_selector("#model-details:has-text('sdxl-vae-fp16-fix')")
    page.wait_for_selector("#model-message:has-text('Downloaded')")
    assert (studio_home / "models" / "vae" / "sdxl-vae-fp16-fix" / "config.json").is_file()

    page.click("#tab-models-download-button")  # a base model from the catalogue, into the workspace
    page.click("#catalogue-table [role=gridcell]:has-text('Stable Diffusion 1.5')")
    page.click("#catalogue-download:has-text('Download Stable Diffusion 1.5')")
    wait_log(page, "download", "1 file(s) downloaded", timeout=180_000)
    page.click("#tab-models-library-button")
    page.wait_for_selector("#model-details:has-text('v1-5-pruned-emaonly')")
    page.click("#model-use-base")
    checkpoint = studio_home / "models" / "checkpoints" / "sd15" / "v1-5-pruned-emaonly.safetensors"
    page.wait_for_selector("#workspace-model-check :text('SD 1.x · single file')")
    assert workspace.load().model == str(checkpoint)
