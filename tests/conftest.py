import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

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
    arguments (model/, model.safetensors, dataset/). Tests that change files copy them first."""
    from core.dataset.demo import build_demo

    built = {}

    def get(arch: str = "sd1", num_images: int = 8, seed: int = 0):
        key = (arch, num_images, seed)
        if key not in built:
            built[key] = tmp_path_factory.mktemp(f"demo-{arch}") / "demo"
            build_demo(built[key], arch, num_images=num_images, seed=seed)
        return built[key]

    return get
