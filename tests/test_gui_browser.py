"""The GUI in a real browser: Playwright drives Debian's chromium (headless) against gui.py."""
import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.config import TrainConfig
from core.dataset.demo import write_dataset

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    for candidate in (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    if os.environ.get("CI"):
        pytest.fail("no chromium found: CI must run the browser tests (./launch.sh test installs it)")
    pytest.skip("no chromium found (set CHROMIUM_PATH or install Debian's chromium)")


def start_gui(port: int, log_path: Path) -> subprocess.Popen:
    """gui.py on 127.0.0.1:`port`, once it answers; its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        # One torch thread for the jobs it starts: on a 2-core machine the browser and the GUI take the other
        # core, and a 2-thread torch that shares its cores runs many times slower.
        proc = subprocess.Popen([sys.executable, "gui.py", "--port", str(port)], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError("gui.py did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.3)


def reopen(page, url: str) -> None:
    """Load `url` again after the GUI behind it was restarted. The old page's own reconnect may navigate at the
    same moment and abort this load (net::ERR_ABORTED), so a load that was aborted is tried again."""
    from playwright.sync_api import Error

    for attempt in range(3):
        try:
            page.goto(url)
            return
        except Error as error:
            if "ERR_ABORTED" not in str(error) or attempt == 2:
                raise
            time.sleep(1)


@contextlib.contextmanager
def served_gui(home: Path, port: int):
    """gui.py with STUDIO_HOME `home` on `port`: its URL. On leaving, it stops and its log has no traceback."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STUDIO_HOME", str(home))
        proc = start_gui(port, home / "gui.log")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    output = (home / "gui.log").read_text(errors="replace")
    assert "Traceback" not in output, output


@pytest.fixture
def gui_url(studio_home, free_port):
    with served_gui(studio_home, free_port()) as url:
        yield url


@pytest.fixture
def page(gui_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(60_000)
        page.goto(gui_url)
        yield page
        browser.close()


@pytest.fixture
def laptop_page(gui_url):
    """A page of the GUI in a 1366x768 window (the smallest laptop screen we design for)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.set_default_timeout(180_000)  # a busy 2-core machine: one click can take a minute
        page.goto(gui_url)
        yield page
        browser.close()


def show_field(page, model, name: str) -> None:
    """Bring form field `name` of config class `model` into view: its section's sub-tab (a tabbed form), then its
    folded "More settings" when it is an advanced one."""
    from core.config import field_meta
    from tabs.form import section_id

    meta = field_meta(model, name)
    section = f"{model.__name__}-section-{section_id(meta['group'])}"
    if page.query_selector(f"#{section}-button"):
        page.click(f"#{section}-button")
    if meta["advanced"] and not page.is_visible(f"#{model.__name__}-{name}"):
        page.click(f"#{section} .sf-more >> text=More settings")
    page.wait_for_selector(f"#{model.__name__}-{name}", state="visible")


def cpu_demo_training(page, kit: Path, output_dir: Path, steps: int) -> None:
    """On the Training tab: the CPU demo preset on a demo kit's model and dataset, `steps` steps into `output_dir`."""
    page.click("#tab-training-button")
    page.click("#train-preset input")
    page.click("ul[role='listbox'] li:has-text('CPU demo')")
    show_field(page, TrainConfig, "output_name")  # settings outside the first screen sit in sub-tabs by section
    wait_value(page, "TrainConfig-output_name", "'demo-finetune'")
    page.wait_for_selector("#train-changes:has-text('Same as preset')")
    for name, value in (("pretrained_model_name_or_path", kit / "model"), ("train_data_dir", kit / "dataset"),
                        ("output_dir", output_dir)):
        show_field(page, TrainConfig, name)
        fill(page, f"TrainConfig-{name}", str(value))
    fill(page, "TrainConfig-max_train_steps", str(steps))


def wait_log(page, prefix: str, text: str, timeout: int = 30_000) -> None:
    """Wait until the job panel `prefix`'s log shows `text`."""
    page.wait_for_function(f"document.querySelector('#{prefix}-log textarea').value.includes({text!r})",
                           timeout=timeout)


def textarea_value(page, selector: str) -> str:
    return page.eval_on_selector(f"{selector} textarea", "e => e.value")


def test_scan_demo_dataset_then_edit_and_restore_a_caption(page, tmp_path):
    dataset = tmp_path / "my dataset é"
    write_dataset(dataset, num_images=12, seed=3)
    page.fill("#ScanConfig-train_data_dir textarea", str(dataset))
    page.click("#scan-button")

    wait_log(page, "scan", "scan: done")
    log = textarea_value(page, "#scan-log")
    assert "scan: started" in log and "12 readable" in log
    page.wait_for_selector("#scan-progress:has-text('12/12')")
    page.wait_for_selector("#scan-report:has-text('12 image files, 12 readable')")
    assert "python" in page.eval_on_selector("#scan-command textarea, #scan-command input", "e => e.value")
    page.wait_for_selector("#aspect-histogram-summary .chart-summary[data-total='12']")
    page.wait_for_selector("#size-histogram-summary .chart-summary[data-total='12']")

    page.click("#dataset-gallery img >> nth=0")
    page.wait_for_function("document.querySelector('#caption-editor textarea').value.length > 0")
    original = textarea_value(page, "#caption-editor")
    caption_files = [p for p in dataset.rglob("*.txt") if p.read_text() == original]
    assert len(caption_files) >= 1
    page.fill("#caption-editor textarea", "edited in the browser")
    page.click("#caption-save")
    deadline = time.time() + 30
    while not any(p.read_text() == "edited in the browser" for p in caption_files) and time.time() < deadline:
        time.sleep(0.2)
    edited = [p for p in caption_files if p.read_text() == "edited in the browser"]
    assert len(edited) == 1

    page.click("#caption-backups input")
    page.click("ul[role='listbox'] li >> nth=0")
    page.click("#caption-restore")
    page.wait_for_function(f"document.querySelector('#caption-editor textarea').value === {original!r}")
    assert edited[0].read_text() == original

    page.click("#tab-runs-button")
    page.click("#runs-refresh")
    page.wait_for_selector("#runs-table:has-text('done')")
    page.click("#runs-table [role=gridcell][aria-rowindex='2'] >> nth=0")
    wait_log(page, "run", "scan: done")


def test_plan_buckets_then_cache_latents(page, tmp_path):
    from core.dataset.demo import build_demo

    build_demo(tmp_path / "kit", arch="sd1", num_images=10, seed=2)
    page.click("#tab-buckets-button")
    page.fill("#BucketConfig-train_data_dir textarea", str(tmp_path / "kit" / "dataset"))
    page.fill("#BucketConfig-train_batch_size input", "4")
    page.click("#bucket-button")
    wait_log(page, "bucket", "bucket: done")
    page.wait_for_selector("#bucket-summary:has-text('10 images in')")
    summary = page.wait_for_selector("#bucket-chart-summary .chart-summary[data-total='10']")
    assert int(summary.get_attribute("data-bars")) >= 2
    page.wait_for_selector("#bucket-warnings:has-text('fewer images than the batch size')")
    page.wait_for_selector("#bucket-samples img")

    page.fill("#CacheConfig-pretrained_model_name_or_path :is(textarea, input)", str(tmp_path / "kit" / "model"))
    page.click("#cache-button")
    wait_log(page, "cache", "cache: done", 120_000)
    assert len(list((tmp_path / "kit" / "dataset").rglob("*.latents.safetensors"))) == 10


def fill(page, elem_id: str, value: str) -> None:
    page.fill(f"#{elem_id} :is(textarea, input)", value)


def wait_value(page, elem_id: str, expected_js: str, number: bool = False) -> None:
    """Wait until the form field's value equals `expected_js` (a JS literal)."""
    value = f"document.querySelector('#{elem_id} :is(textarea, input)').value"
    page.wait_for_function(f"{'+' if number else ''}{value} === {expected_js}")


def test_train_from_the_cpu_demo_preset_stop_and_resume(page, tmp_path):
    from core.dataset.demo import build_demo

    kit = tmp_path / "kit é"
    build_demo(kit, arch="sd1", num_images=8, seed=4)
    cpu_demo_training(page, kit, tmp_path / "out", steps=120)
    page.wait_for_selector("#train-changes:has-text('4 setting(s) differ')")

    page.click("#train-check")
    page.wait_for_selector("#train-report:has-text('The run will start with')")
    page.click("#train-button")
    wait_log(page, "train", "training 120 steps", 120_000)
    page.wait_for_selector("#train-checkpoint:has-text('Latest checkpoint')", timeout=120_000)
    page.wait_for_function("+document.querySelector('#train-loss-summary .chart-summary')?.dataset.points > 5")
    page.wait_for_selector("#train-samples img")
    page.click("#train-stop")
    page.wait_for_selector("#train-status:has-text('stopped')", timeout=120_000)
    assert list((tmp_path / "out").glob("demo-finetune-step*-state"))

    page.click("text=Resume a stopped run")
    page.click("#train-resume-find")
    page.wait_for_selector("#train-report:has-text('saved state(s)')")
    page.click("#train-resume")
    wait_log(page, "train", "resumed from", 120_000)
    page.wait_for_selector("#train-status:has-text('done')", timeout=300_000)
    assert (tmp_path / "out" / "demo-finetune.safetensors").is_file()
    assert "120/120" in page.inner_text("#train-progress")

    page.reload()  # the run's view is rebuilt from its folder
    page.click("#tab-training-button")
    page.wait_for_selector("#train-status:has-text('done')")
    page.wait_for_function("+document.querySelector('#train-loss-summary .chart-summary')?.dataset.points > 5")
    page.wait_for_selector("#train-samples img")


def test_train_preset_save_as_and_kohya_import(page, tmp_path):
    page.click("#tab-training-button")
    fill(page, "TrainConfig-learning_rate", "0.000123")
    fill(page, "train-preset-name", "My settings")
    page.click("#train-preset-save-as")
    page.wait_for_selector("#train-preset-message:has-text('Saved **My settings**'), "
                           "#train-preset-message:has-text('Saved My settings')")
    page.click("#train-preset-defaults")
    wait_value(page, "TrainConfig-learning_rate", "0.000002", number=True)
    page.click("#train-preset input")
    page.click("ul[role='listbox'] li:has-text('My settings')")
    wait_value(page, "TrainConfig-learning_rate", "0.000123", number=True)

    config = tmp_path / "kohya config.json"
    config.write_text('{"learning_rate": "5e-6", "epoch": 3, "lr_warmup": 10, "optimizer": "AdamW8bit", '
                      '"lr_scheduler": "cosine", "color_aug": true, "xformers": true}', encoding="utf-8")
    page.click("text=Import a kohya_ss")
    page.set_input_files("#train-import input[type=file]", str(config))
    page.wait_for_selector("#train-import-message:has-text('Imported')")
    assert "color_aug" in page.inner_text("#train-import-message")
    wait_value(page, "TrainConfig-max_train_epochs", "3", number=True)
    wait_value(page, "TrainConfig-optimizer_type", "'AdamW8bit'")


def test_tag_with_a_tiny_wd14_model_preview_then_run(page, tmp_path):
    from PIL import Image
    from test_tagger_wd14 import EXPECTED, RED, build_model

    model = build_model(tmp_path / "tagger é")
    data = tmp_path / "images"
    data.mkdir()
    for i in range(5):
        Image.new("RGB", (40, 32), RED).save(data / f"red {i}.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.click("#tab-captioning-button")
    fill(page, "TagConfig-train_data_dir", str(data))
    fill(page, "TagConfig-model_dir", str(model))
    page.click("#tag-preview-button")
    page.wait_for_selector("#tag-preview-message:has-text('nothing was written')")
    page.wait_for_selector(f"#tag-preview:has-text('{EXPECTED[RED]}')")
    assert not list(data.glob("*.txt"))
    page.click("#tag-button")
    wait_log(page, "tag", "tag: done")
    page.wait_for_selector("#tag-summary:has-text('written 5')")
    page.wait_for_selector("#tag-summary:has-text('broken.png')")
    assert {p.read_text() for p in data.glob("*.txt")} == {EXPECTED[RED]}


def test_clean_captions_preview_apply_undo_and_statistics(page, tmp_path):
    from PIL import Image

    data = tmp_path / "captions é"
    data.mkdir()
    originals = {}
    for i in range(4):
        Image.new("RGB", (8, 8)).save(data / f"img {i}.png")
        originals[f"img {i}.txt"] = f"long_hair, watermark,  long_hair, tag_{i}".encode()
        (data / f"img {i}.txt").write_bytes(originals[f"img {i}.txt"])
    page.click("#tab-cleaning-button")
    fill(page, "CleanConfig-train_data_dir", str(data))
    page.click("#clean-rule-choice input")
    page.click("ul[role='listbox'] li:has-text('remove')")
    page.click("#clean-rule-add")
    page.wait_for_function("document.querySelector('#CleanConfig-rules textarea').value.includes('remove:')")
    fill(page, "CleanConfig-rules", "underscores\nwhitespace\ndedupe\nremove: watermark")
    page.click("#clean-preview-button")
    page.wait_for_selector("#clean-preview-message:has-text('4 of 4 caption files would change')")
    page.wait_for_selector("#clean-preview:has-text('long hair, tag 0')")
    assert {p.name: p.read_bytes() for p in data.glob("*.txt")} == originals

    page.click("#clean-button")
    wait_log(page, "clean", "clean: done")
    assert (data / "img 0.txt").read_text() == "long hair, tag 0"

    page.click("text=Tag statistics and search")
    page.click("#clean-count")
    page.wait_for_selector("#clean-tag-chart .bar-count")
    counts = page.eval_on_selector_all("#clean-tag-chart .bar-count", "els => els.map(e => +e.textContent)")
    assert counts[0] == 4 and "long hair" in page.inner_text("#clean-tag-chart")  # the top tag: in all 4 captions

    page.click("text=Undo a cleaning")
    page.click("#clean-snapshot-refresh")
    page.wait_for_function("document.querySelector('#clean-snapshot input').value.length > 0")
    page.click("#clean-undo")
    wait_log(page, "clean-undo", "undo_clean: done")
    assert {p.name: p.read_bytes() for p in data.glob("*.txt")} == originals


def test_tools_tab_merges_a_lora_and_never_replaces_the_output(page, tmp_path):
    from test_lora_merge import lora_model, model_parts

    from core.dataset.demo import build_demo
    from core.models.lora import save_lora
    from core.models.sd import load_sd_model

    build_demo(tmp_path / "kit", arch="sd1", num_images=4, seed=0)
    base = tmp_path / "kit" / "model.safetensors"
    lora = save_lora(tmp_path / "loras" / "my style.safetensors", model_parts(lora_model(base, seed=0)))
    page.click("#tab-tools-button")
    fill(page, "MergeLoraConfig-pretrained_model_name_or_path", str(base))
    fill(page, "MergeLoraConfig-lora_models", f"{lora}\n{lora}")
    fill(page, "MergeLoraConfig-ratios", "0.5\n0.5")
    fill(page, "MergeLoraConfig-output_dir", str(tmp_path / "merged"))
    fill(page, "MergeLoraConfig-output_name", "styled")
    page.click("#merge_lora-button")
    wait_log(page, "merge_lora", "merge_lora: done", 120_000)
    output = tmp_path / "merged" / "styled.safetensors"
    assert load_sd_model(str(output)).arch == "sd1"
    before = output.read_bytes()

    page.click("#merge_lora-button")  # again: the output exists now
    wait_log(page, "merge_lora", "exists already", 120_000)
    assert output.read_bytes() == before


def test_a_killed_gui_started_again_reattaches_to_the_running_training(studio_home, tmp_path, free_port):
    """kill -9 of the GUI leaves the job running; a new GUI on the same port shows it live and stops it."""
    from playwright.sync_api import sync_playwright

    from core.dataset.demo import build_demo

    build_demo(tmp_path / "kit", arch="sd1", num_images=8, seed=4)
    port, log = free_port(), studio_home / "gui.log"
    gui = start_gui(port, log)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(90_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("#tab-training-button")
        page.click("#train-preset input")
        page.click("ul[role='listbox'] li:has-text('CPU demo')")
        show_field(page, TrainConfig, "output_name")
        wait_value(page, "TrainConfig-output_name", "'demo-finetune'")
        for name, value in (("pretrained_model_name_or_path", tmp_path / "kit" / "model"),
                            ("train_data_dir", tmp_path / "kit" / "dataset"), ("output_dir", tmp_path / "out")):
            show_field(page, TrainConfig, name)
            fill(page, f"TrainConfig-{name}", str(value))
        fill(page, "TrainConfig-max_train_steps", "5000")
        page.wait_for_selector("#train-changes:has-text('4 setting(s) differ')")
        page.click("#train-button")
        wait_log(page, "train", "training 5000 steps", 120_000)

        gui.kill()  # SIGKILL: no clean-up of any kind
        gui.wait(timeout=20)
        gui = start_gui(port, log)
        try:
            reopen(page, f"http://127.0.0.1:{port}/")
            page.click("#tab-training-button")
            page.wait_for_selector("#train-status:has-text('running')")
            wait_log(page, "train", "training 5000")
            shown = page.inner_text("#train-progress")
            page.wait_for_function(f"document.querySelector('#train-progress').innerText !== {shown!r}")  # live
            page.click("#train-stop")
            page.wait_for_selector("#train-status:has-text('stopped')", timeout=120_000)
            assert list((tmp_path / "out").glob("demo-finetune-step*-state"))
        finally:
            browser.close()
            gui.terminate()
            gui.wait(timeout=20)
