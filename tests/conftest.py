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
