import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def studio_home(tmp_path_factory, monkeypatch):
    """Runs, user presets and backups of each test go to a fresh folder, never the repo."""
    home = tmp_path_factory.mktemp("studio-home")
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.delenv("STUDIO_USER_PRESETS", raising=False)
    return home


@pytest.fixture(scope="session")
def demo_kit(tmp_path_factory):
    """`demo_kit(arch, num_images, seed)`: a demo kit folder built once per session for those
    arguments (model/, model.safetensors, dataset/). Tests that change files copy them first
    (`copy_dataset`)."""
    from core.dataset.demo import build_demo

    built = {}

    def get(arch: str = "sd1", num_images: int = 8, seed: int = 0):
        key = (arch, num_images, seed)
        if key not in built:
            built[key] = tmp_path_factory.mktemp(f"demo-{arch}") / "demo"
            build_demo(built[key], arch, num_images=num_images, seed=seed)
        return built[key]

    return get


@pytest.fixture
def copy_dataset(tmp_path):
    """`copy_dataset(kit)`: a fresh copy of a demo kit's dataset (images and captions, without the latent
    cache other tests may have written beside them) at tmp_path/dataset, for a test that changes files."""
    def copy(kit):
        return shutil.copytree(kit / "dataset", tmp_path / "dataset", ignore=shutil.ignore_patterns("*.latents.*"))

    return copy


SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR") or Path(__file__).resolve().parent.parent / "test-artifacts"
                   / "screenshots")
_screenshots_taken: list[Path] = []


@pytest.fixture
def screenshot():
    """`screenshot(page, name)`: the page as it is, saved to SCREENSHOTS/<name>.png (a test artefact for
    reviewers: the folder is named at the end of the test output)."""
    def take(page, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path))
        _screenshots_taken.append(path)
        return path

    return take


def pytest_terminal_summary(terminalreporter):
    if _screenshots_taken:
        terminalreporter.write_line(f"{len(_screenshots_taken)} screenshot(s) of the GUI saved in {SCREENSHOTS}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """`free_port()`: a TCP port on 127.0.0.1 that nothing listens on now."""
    return _free_port


@pytest.fixture
def small_dataset(tmp_path):
    """A kohya-style folder of 12 small captioned images (3 repeats): a scan of it takes a moment."""
    from PIL import Image

    folder = tmp_path / "data" / "3_cats"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (64 + i, 48), (i * 20, 0, 0)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"cat {i}")
    return tmp_path / "data"


@pytest.fixture
def stuck_job(small_dataset):
    """`(run_dir, process)` of a scan started as the GUI starts it and suspended while it runs: a job that
    no longer answers to STOP (the stop must end it). Ended at teardown if the test did not."""
    import psutil

    from core.jobs.run_folder import RunFolder
    from core.jobs.runner import kill_job, start_job

    run_dir = start_job("scan", {"train_data_dir": [str(small_dataset)]})
    deadline = time.time() + 60
    while RunFolder(run_dir).read_status().get("state") != "running":
        assert time.time() < deadline, "the scan did not start"
        time.sleep(0.05)
    proc = psutil.Process(RunFolder(run_dir).read_status()["pid"])
    proc.suspend()
    yield run_dir, proc
    kill_job(run_dir)


@pytest.fixture
def ctx(tmp_path):
    """A quiet JobContext on tmp_path/run, closed after the test."""
    from core.jobs.protocol import JobContext

    with JobContext(tmp_path / "run", echo=False) as context:
        yield context


@pytest.fixture
def small_tmpfs(tmp_path):
    """`small_tmpfs(megabytes=8)`: an empty folder on a fresh tmpfs of that size (a real drive that fills
    up), unmounted after the test. Skips where it cannot mount (not Linux, not root, no mount rights)."""
    mounted = []

    def mount(megabytes: int = 8):
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs Linux and root")
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # still busy: detach it


# The launch.bat scenarios under wine run in the background of the suite (tests/windows/wine_background.py):
# started once the tests are collected, read by test_launch_wine.py (run last), ended with the session.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "windows"))
import wine_background  # noqa: E402


def pytest_collection_modifyitems(items):
    wine_background.last(items)


def pytest_collection_finish(session):
    wine_background.start(session)


def pytest_sessionfinish(session):
    wine_background.stop()
