"""The `download` job against a fake Hub on 127.0.0.1 (tests/fakehub.py): files in place and hash-checked, resume
after a stop, a kill, a dropped connection or a full drive, clear refusals, the token never written; the catalogue."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakehub import fake_hub  # noqa: F401 (the fixture)

from core.config import ConfigError, DownloadConfig, validate
from core.filenames import WD14_FILES
from core.fsutil import REPO_ROOT, free_bytes, models_root
from core.jobs.run_folder import RunFolder
from core.jobs.runner import request_stop
from core.models.catalogue import CATALOGUE, KIND_FOLDERS, default_folder, get_entry
from core.models.download import READ_CHUNK

MB = 2**20
REPO = "me/tiny"


def payload(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset (a resumed file spliced at the wrong place would not hash right)."""
    out, block = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{block}".encode()).digest()
        block += 1
    return bytes(out[:size])


@pytest.fixture
def tiny_repo(fake_hub):  # noqa: F811
    weights = payload(3 * MB)
    fake_hub.add_repo(REPO, {"model.safetensors": weights, "config.json": b'{"hidden": 32}\n',
                             "sub/notes.txt": b"hello\n", "README.md": b"# tiny\n"})
    return fake_hub, weights


def argv(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "core", "download", "--run-dir", str(run_dir), *args]


def download(run_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv(run_dir, *args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(argv(run_dir, *args), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def partials(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.incomplete")) if folder.exists() else []


def wait_for_partial(folder: Path, at_least: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not any(p.stat().st_size >= at_least for p in partials(folder)):
        assert proc.poll() is None, "the download ended before it was interrupted"
        assert time.time() < deadline, "no partial file grew"
        time.sleep(0.02)


def settled(hub) -> int:
    """The bytes the hub has served once the connection of an ended client stops being written to."""
    while True:
        before = hub.served
        time.sleep(0.3)
        if hub.served == before:
            return before


def error_of(run_dir: Path) -> str:
    errors = [e["message"] for e in RunFolder(run_dir).read_events() if e["event"] == "error"]
    assert len(errors) == 1
    return errors[0]


def test_files_in_place_hash_checked_and_present_ones_skipped(tiny_repo, tmp_path):
    hub, weights = tiny_repo
    out = tmp_path / "models"
    done = download(tmp_path / "run1", "--repo_id", REPO, "--files", "*.safetensors", "sub/", "*.gguf",
                    "--local_dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "sub" / "notes.txt").read_bytes() == b"hello\n"
    assert not (out / "config.json").exists() and not partials(out)
    assert "no file of me/tiny matches '*.gguf'" in done.stdout

    events = RunFolder(tmp_path / "run1").read_events()
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["unit"] for e in progress} == {"bytes"}
    assert progress[-1]["step"] == progress[-1]["total"] == len(weights) + len(b"hello\n")
    result = json.loads((tmp_path / "run1" / "result.json").read_text())
    assert result["downloaded"] == ["model.safetensors", "sub/notes.txt"]
    assert result["files"][0]["sha256"] == hashlib.sha256(weights).hexdigest()

    served = hub.served
    again = download(tmp_path / "run2", "--repo_id", REPO, "--files", "*.safetensors", "sub/",
                     "--local_dir", str(out))
    assert again.returncode == 0, again.stdout + again.stderr
    assert hub.served == served, "files already in place were fetched again"
    assert "model.safetensors: already there (its sha256 matches" in again.stdout


def test_stop_mid_file_then_the_next_run_continues(tiny_repo, tmp_path):
    hub, weights = tiny_repo
    out, run1 = tmp_path / "models", tmp_path / "run1"
    hub.delay = 0.02  # 64 KiB every 20 ms: about 1 s for the file
    proc = start(run1, "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    wait_for_partial(out, MB, proc)
    request_stop(run1)
    assert proc.wait(timeout=60) == 0
    assert RunFolder(run1).read_status()["state"] == "stopped"
    assert not (out / "model.safetensors").exists()
    (partial,) = partials(out)
    kept, first_run = partial.stat().st_size, settled(hub)
    assert 0 < kept < len(weights)

    hub.delay = 0
    done = download(tmp_path / "run2", "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "model.safetensors").read_bytes() == weights and not partials(out)
    assert hub.served - first_run == len(weights) - kept  # only the missing bytes, by a Range request
    assert hub.served < 2 * len(weights)
    assert "continuing at" in done.stdout


def test_killed_mid_file_then_the_next_run_continues(tiny_repo, tmp_path):
    hub, weights = tiny_repo
    out = tmp_path / "models"
    hub.delay = 0.02
    proc = start(tmp_path / "run1", "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    wait_for_partial(out, MB, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "model.safetensors").exists()
    (partial,) = partials(out)
    kept, first_run = partial.stat().st_size, settled(hub)

    hub.delay = 0
    done = download(tmp_path / "run2", "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "model.safetensors").read_bytes() == weights and not partials(out)
    assert hub.served - first_run == len(weights) - kept
    assert hub.served < 2 * len(weights)


def test_dropped_connections_are_resumed_inside_the_job(tiny_repo, tmp_path):
    hub, weights = tiny_repo
    out = tmp_path / "models"
    hub.drop(after=1_500_000, times=2)  # huggingface_hub's http_get retries with a Range request (5 tries)
    done = download(tmp_path / "run", "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "model.safetensors").read_bytes() == weights
    assert len([r for r in hub.requests if r[0] == "GET" and r[1].startswith("/cdn/")]) == 3
    # each retry continues after the last whole chunk it read (READ_CHUNK, 1 MiB): a drop costs less than that
    assert len(weights) < hub.served < len(weights) + 2 * READ_CHUNK
    assert "huggingface_hub: Error while downloading" in done.stdout  # its retry is in the job's log


def test_a_corrupt_byte_is_a_clear_error_and_nothing_is_put_in_place(tiny_repo, tmp_path):
    hub, _ = tiny_repo
    out, run = tmp_path / "models", tmp_path / "run"
    hub.corrupt.add(f"{REPO}/model.safetensors")
    done = download(run, "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    assert done.returncode == 1
    message = error_of(run)
    assert "\n" not in message
    assert "model.safetensors: the downloaded bytes do not match the Hub's sha256" in message
    assert not (out / "model.safetensors").exists() and not partials(out)


def test_a_different_file_at_a_destination_is_never_overwritten(tiny_repo, tmp_path):
    hub, _ = tiny_repo
    out, run = tmp_path / "models", tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("mine")
    done = download(run, "--repo_id", REPO, "--files", "*.json", "*.safetensors", "--local_dir", str(out))
    assert done.returncode == 1
    assert "config.json already in" in error_of(run) and "never overwritten" in error_of(run)
    assert (out / "config.json").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["config.json"] and hub.served == 0


def test_nothing_matching_is_refused_before_any_folder_is_made(tiny_repo, tmp_path):
    out, run = tmp_path / "models", tmp_path / "run"
    done = download(run, "--repo_id", REPO, "--files", "*.gguf", "--local_dir", str(out))
    assert done.returncode == 1
    assert error_of(run).startswith("DownloadError: refused: no file of me/tiny matches *.gguf (it has: README.md")
    assert not out.exists()


def test_no_room_is_refused_before_a_byte_is_fetched(tiny_repo, tmp_path, small_tmpfs):
    hub, _ = tiny_repo
    drive = small_tmpfs(2)
    run = tmp_path / "run"
    done = download(run, "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(drive / "models"))
    assert done.returncode == 1
    assert re.search(r"refused: 3\.0 MiB to download into .* but 2\.0 MiB free", error_of(run))
    assert hub.served == 0 and not (drive / "models").exists()


def test_a_drive_filling_up_mid_file_keeps_the_bytes_for_the_next_run(tiny_repo, tmp_path, small_tmpfs):
    hub, weights = tiny_repo
    drive = small_tmpfs(5)
    out, run = drive / "models", tmp_path / "run1"
    hub.delay = 0.02
    proc = start(run, "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    wait_for_partial(out, MB, proc)
    filler = drive / "filler"
    filler.write_bytes(b"\0" * (free_bytes(drive) - 64 * 1024))  # another program takes the room
    assert proc.wait(timeout=60) == 1
    assert "the drive of" in error_of(run) and "is full" in error_of(run)
    assert not (out / "model.safetensors").exists()
    (partial,) = partials(out)
    kept, first_run = partial.stat().st_size, settled(hub)

    filler.unlink()
    hub.delay = 0
    done = download(tmp_path / "run2", "--repo_id", REPO, "--files", "model.safetensors", "--local_dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "model.safetensors").read_bytes() == weights
    assert hub.served - first_run == len(weights) - kept


def test_gated_repo_without_a_token_says_what_to_do(fake_hub, tmp_path):  # noqa: F811
    fake_hub.add_repo("me/gated", {"model.safetensors": payload(1000)}, gated=True, tokens=("secret-xyz",))
    run, out = tmp_path / "run", tmp_path / "models"
    done = download(run, "--repo_id", "me/gated", "--files", "*", "--local_dir", str(out))
    assert done.returncode == 1
    assert error_of(run) == ("DownloadError: me/gated is gated: accept its licence on huggingface.co and log in "
                             "with `hf auth login` or set HF_TOKEN")
    assert fake_hub.served == 0 and not out.exists()

    refused = download(tmp_path / "run2", "--repo_id", "me/gated", "--files", "*", "--local_dir", str(out),
                       env={"HF_TOKEN": "not-accepted"})  # a token without access: the Hub's 403 says the same
    assert refused.returncode == 1
    assert "me/gated is gated: accept its licence" in error_of(tmp_path / "run2")


def test_the_token_is_used_and_never_written(fake_hub, tmp_path):  # noqa: F811
    weights = payload(200_000)
    fake_hub.add_repo("me/gated", {"model.safetensors": weights}, gated=True, tokens=("secret-xyz",))
    run, out = tmp_path / "run", tmp_path / "models"
    done = download(run, "--repo_id", "me/gated", "--files", "*", "--local_dir", str(out),
                    env={"HF_TOKEN": "secret-xyz"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "model.safetensors").read_bytes() == weights
    assert "Bearer secret-xyz" in fake_hub.authorizations
    assert "secret-xyz" not in done.stdout + done.stderr
    for path in [*run.rglob("*"), *out.rglob("*")]:
        assert not path.is_file() or b"secret-xyz" not in path.read_bytes(), path


def test_no_network_fails_fast_in_one_line(tiny_repo, tmp_path, free_port):
    run, out = tmp_path / "run", tmp_path / "models"
    began = time.monotonic()
    done = download(run, "--repo_id", REPO, "--files", "*", "--local_dir", str(out),
                    env={"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert done.returncode == 1
    assert time.monotonic() - began < 30
    assert re.fullmatch(r"DownloadError: cannot reach http://127\.0\.0\.1:\d+ \(.+\): check the internet "
                        r"connection; nothing was downloaded", error_of(run))
    assert not out.exists()


def test_a_catalogue_model_goes_to_its_folder_under_models(fake_hub, tmp_path, studio_home):  # noqa: F811
    files = {"model.onnx": payload(50_000), "selected_tags.csv": b"tag_id,name,category,count\n",
             "model.safetensors": payload(60_000, seed=1)}
    fake_hub.add_repo("SmilingWolf/wd-vit-tagger-v3", files)
    done = download(tmp_path / "run", "--catalogue", "wd-vit-tagger-v3")
    assert done.returncode == 0, done.stdout + done.stderr
    folder = studio_home / "models" / "taggers" / "wd-vit-tagger-v3"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "selected_tags.csv"]
    assert (folder / "model.onnx").read_bytes() == files["model.onnx"]


def test_the_catalogue_is_well_formed(studio_home):
    assert len({e.id for e in CATALOGUE}) == len(CATALOGUE)
    for entry in CATALOGUE:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.repo_id), entry
        assert entry.files and all(p.strip() for p in entry.files), entry
        assert entry.kind in KIND_FOLDERS and entry.size_gb > 0 and entry.label and entry.licence, entry
        cfg = DownloadConfig.for_catalogue(entry.id)
        assert cfg.source() == (entry.repo_id, list(entry.files))
        assert cfg.folder() == default_folder(entry) == models_root() / KIND_FOLDERS[entry.kind] / entry.id
        assert models_root() == studio_home / "models"
    assert {e.id for e in CATALOGUE if e.kind == "tagger"} == {
        "wd-vit-tagger-v3", "wd-swinv2-tagger-v3", "wd-convnext-tagger-v3", "wd-eva02-large-tagger-v3"}
    assert all(e.files == WD14_FILES for e in CATALOGUE if e.kind == "tagger")
    with pytest.raises(KeyError, match="no catalogue entry 'nope'"):
        get_entry("nope")


def test_config_needs_a_source_and_a_well_formed_repo_id(tmp_path):
    with pytest.raises(ConfigError, match="choose a catalogue model, or give repo_id"):
        validate(DownloadConfig, {}, "test")
    with pytest.raises(ConfigError, match="repo_id.*owner/name"):
        validate(DownloadConfig, {"repo_id": "../etc", "files": ["*"]}, "test")
    cfg = validate(DownloadConfig, {"repo_id": "me/tiny", "files": [" *.json ", ""]}, "test")
    assert cfg.files == ["*.json"] and cfg.folder() == models_root() / "downloads" / "me--tiny"
    assert download(tmp_path / "run", "--repo_id", "nobody").returncode == 2


def test_the_fake_hub_serves_huggingface_hubs_own_download(tiny_repo, tmp_path):
    """The fake Hub in the shape huggingface_hub asks for: hf_hub_download (HEAD, redirect, ETag) works on it."""
    _, weights = tiny_repo
    code = ("import sys; from huggingface_hub import hf_hub_download; "
            "print(hf_hub_download('me/tiny', 'model.safetensors', local_dir=sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "0"})
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).read_bytes() == weights
