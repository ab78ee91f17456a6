"""Security gates: what this suite guarantees about the studio.

1. No shell anywhere: no `shell=` other than a false literal on any call, and no os.system /
   os.popen / subprocess.getoutput / getstatusoutput / asyncio.create_subprocess_shell, in any
   .py file of the repo (checked on the source, so a new call fails with its file:line).
2. Paths reach jobs literally: a dataset folder named with shell metacharacters, quotes, spaces
   and unicode goes from the GUI's form to a real scan job and back unchanged, nothing in it is
   run, and the command the GUI shows for copying splits back into the exact argv.
3. This computer only, unless a login is set: non-loopback hosts and --share are refused
   without --auth, a bare `python gui.py` listens on 127.0.0.1 alone, and Gradio and
   TensorBoard are given 127.0.0.1 unless the user says otherwise.
4. Pickles do not run: a .ckpt whose pickle would run code is refused by every loader with an
   error naming the file, nothing in it runs, and every torch.load in the app is weights-only.
"""
from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

import gui
from core.fsutil import REPO_ROOT

SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell"}
UNPICKLING_CALLS = {"pickle.load", "pickle.loads", "torch.serialization.load"}
APP_SOURCES = ("core", "tabs", "gui.py")

_RAW_NASTY = "evil; $(touch PWNED) && echo \"quoted\" 'single' | `touch PWNED` * é 猫 ~"
# Windows forbids some of these characters in file names; test with what it allows.
NASTY = "".join(c for c in _RAW_NASTY if c not in '<>:"/\\|?*') if os.name == "nt" else _RAW_NASTY


# --- source checks ---------------------------------------------------------------------------

def repo_python_files() -> list[Path]:
    """Every .py file of the repo, without virtual environments and hidden folders."""
    files = []
    for path in REPO_ROOT.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).parts[:-1]
        if not any(p.startswith(".") or p in ("venv", "__pycache__", "site-packages") for p in parts):
            files.append(path)
    return sorted(files)


def app_python_files() -> list[Path]:
    return [p for p in repo_python_files() if p.relative_to(REPO_ROOT).parts[0] in APP_SOURCES]


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it stands for (`import subprocess as sp`, `from os import system`)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _called_name(call: ast.Call, imported: dict[str, str]) -> str | None:
    """The dotted name a call refers to (`sp.run` -> `subprocess.run`), None if not a name."""
    parts, node = [], call.func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(imported.get(node.id, node.id))
    return ".".join(reversed(parts))


def _calls(source: str, filename: str):
    tree = ast.parse(source, filename)
    imported = _imported_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, _called_name(node, imported)


def _is_false_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and not node.value


def shell_uses(source: str, filename: str = "<string>") -> list[str]:
    """'file:line: what' for every call that may go through a shell."""
    found = []
    for call, name in _calls(source, filename):
        for keyword in call.keywords:
            if keyword.arg == "shell" and not _is_false_literal(keyword.value):
                found.append(f"{filename}:{call.lineno}: shell={ast.unparse(keyword.value)}")
        if name in SHELL_CALLS:
            found.append(f"{filename}:{call.lineno}: {name}()")
    return found


def unsafe_loads(source: str, filename: str = "<string>") -> list[str]:
    """'file:line: what' for every torch.load without weights_only=True, and every pickle.load."""
    found = []
    for call, name in _calls(source, filename):
        if name == "torch.load":
            weights_only = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{filename}:{call.lineno}: torch.load without weights_only=True")
        elif name in UNPICKLING_CALLS:
            found.append(f"{filename}:{call.lineno}: {name}()")
    return found


def test_the_source_checkers_catch_what_they_look_for():
    shell = "shell"  # spelled apart so that no line of the repo reads like a shell call
    bad = ("import os, subprocess\nimport subprocess as sp\nfrom os import system as run_it\nimport torch\n"
           f"subprocess.run('x', {shell}=True)\nsp.Popen(['x'], {shell}=flag)\nos.system('x')\nrun_it('x')\n"
           "subprocess.getoutput('x')\ntorch.load(f)\ntorch.load(f, weights_only=False)\n")
    assert shell_uses(bad, "bad.py") == [f"bad.py:5: {shell}=True", f"bad.py:6: {shell}=flag", "bad.py:7: os.system()",
                                         "bad.py:8: os.system()", "bad.py:9: subprocess.getoutput()"]
    assert unsafe_loads(bad, "bad.py") == ["bad.py:10: torch.load without weights_only=True",
                                           "bad.py:11: torch.load without weights_only=True"]
    good = ("import subprocess, torch\nsubprocess.run(['x'], shell=False)\n"
            "torch.load(f, map_location='cpu', weights_only=True)\n")
    assert shell_uses(good) == [] and unsafe_loads(good) == []


def test_no_python_file_of_the_repo_uses_a_shell():
    files = repo_python_files()
    names = {p.relative_to(REPO_ROOT).as_posix() for p in files}
    assert {"gui.py", "core/jobs/runner.py", "core/jobs/tensorboard.py", "tests/test_security.py"} <= names
    found = [hit for path in files
             for hit in shell_uses(path.read_text(encoding="utf-8"), path.relative_to(REPO_ROOT).as_posix())]
    assert found == [], "calls that may run a shell:\n" + "\n".join(found)


def test_every_torch_load_of_the_app_is_weights_only():
    files = app_python_files()
    assert REPO_ROOT / "core" / "models" / "loading.py" in files
    found = [hit for path in files
             for hit in unsafe_loads(path.read_text(encoding="utf-8"), path.relative_to(REPO_ROOT).as_posix())]
    assert found == [], "loads that can run pickled code:\n" + "\n".join(found)


# --- values reach jobs literally -------------------------------------------------------------

def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def pwned_files(test_folder: Path) -> list[Path]:
    """PWNED files anywhere under the test's folder or where a shell would have run (the job's
    working directory, ours, the system temp folder)."""
    places = [REPO_ROOT / "PWNED", Path.cwd() / "PWNED", Path(tempfile.gettempdir()) / "PWNED"]
    return [*test_folder.rglob("PWNED"), *(p for p in places if p.exists())]


def scan_config(dataset: str):
    from core.config import validate
    from core.jobs.registry import JOBS

    return validate(JOBS["scan"].config, {"train_data_dir": [dataset]}, "test")


def test_a_folder_named_with_shell_metacharacters_reaches_the_job_literally(tmp_path, monkeypatch):
    import gradio as gr

    from core.jobs.run_folder import RunFolder
    from core.jobs.runner import job_command, run_state
    from tabs.job_section import JobSection

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / NASTY / "studio"))  # the run folder's path too
    concept = tmp_path / NASTY / f"2_{NASTY}"
    concept.mkdir(parents=True)
    for i, name in enumerate(["one 'a'.png", f"two {NASTY[:12]}.png"]):
        Image.new("RGB", (32 + 8 * i, 32), (40 * i, 90, 10)).save(concept / name)
    dataset = str(tmp_path / NASTY)

    with gr.Blocks():
        section = JobSection("scan", "Scan")
    raw = section.form.show({"train_data_dir": [dataset]})  # what the form shows, read back as on a click
    updates = section.panel.launch(section.values(*raw), name=NASTY)
    run_dir = Path(updates[section.panel.run]["run_dir"])
    wait_until(lambda: run_state(run_dir) not in ("starting", "running"), what="the scan job")

    status = RunFolder(run_dir).read_status()
    assert run_state(run_dir) == "done", (run_dir / "console.txt").read_text(errors="replace")
    assert status["exit_code"] == 0
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["values"]["train_data_dir"] == [dataset]
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert report["folders"] == [dataset]
    assert (report["readable"], report["effective_images"]) == (2, 4)
    assert sorted(Path(image["path"]).name for image in report["images"]) == sorted(
        p.name for p in concept.iterdir())

    shown = updates[section.panel.command]
    assert shown == status["command"]
    if os.name != "nt":  # on Windows the command is quoted for cmd.exe (subprocess.list2cmdline)
        argv = shlex.split(shown)
        assert argv[-4:] == ["--config", str(run_dir / "config.json"), "--run-dir", str(run_dir)]
        assert argv == job_command("scan", run_dir, scan_config(dataset))
    assert pwned_files(tmp_path) == []


@pytest.mark.skipif(os.name == "nt", reason="Windows commands are quoted for cmd.exe, not a POSIX shell")
def test_the_training_command_shown_quotes_an_accelerate_config_path(tmp_path):
    from core.config import validate
    from core.jobs.registry import JOBS
    from core.jobs.runner import display_command, job_command

    config_file = str(tmp_path / NASTY / "accelerate.yaml")
    cfg = validate(JOBS["train"].config, {"pretrained_model_name_or_path": "model.safetensors",
                                          "train_data_dir": ["data"], "output_dir": "out",
                                          "accelerate_config_file": config_file}, "test")
    argv = job_command("train", tmp_path / NASTY / "run", cfg)
    assert argv[argv.index("--config_file") + 1] == config_file
    assert shlex.split(display_command(argv)) == argv


# --- the GUI and its helper servers serve this computer only --------------------------------

@pytest.mark.parametrize("argv", [["--host", "::"], ["--host", "[::]"], ["--host", "10.0.0.1", "--share"]])
def test_other_exposed_hosts_without_auth_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gui.parse_args(argv)
    assert exit_info.value.code == 2 and "without a login" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--host", "::"], ["--host", "192.168.1.5"], ["--share"]])
def test_exposed_hosts_with_auth_are_allowed(argv):
    assert gui.parse_args([*argv, "--auth", "me:pw"]).auth == ("me", "pw")


def test_the_login_can_stay_out_of_the_process_list(tmp_path, monkeypatch, capsys):
    """--auth user:pass is visible to every user of the computer (ps); a file or a variable is not."""
    login = tmp_path / "login.txt"
    login.write_text("me:pw with: colon\n", encoding="utf-8")
    assert gui.parse_args(["--host", "0.0.0.0", "--auth-file", str(login)]).auth == ("me", "pw with: colon")
    monkeypatch.setenv(gui.AUTH_ENV, "you:secret")
    assert gui.parse_args(["--share"]).auth == ("you", "secret")
    assert gui.parse_args(["--share", "--auth", "me:pw"]).auth == ("me", "pw")  # the flag wins
    login.write_text("no colon here\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        gui.parse_args(["--share", "--auth-file", str(login)])
    assert exit_info.value.code == 2 and f"--auth-file {login}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gui.parse_args(["--share", "--auth-file", str(tmp_path / "missing.txt")])
    assert "missing.txt" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "LOCALHOST", "[::1]"])
def test_loopback_hosts_need_no_auth(host):
    assert gui.parse_args(["--host", host]).host == host


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every socket the process and its children listen on."""
    parent = psutil.Process(pid)
    return {(conn.laddr.ip, conn.laddr.port) for proc in [parent, *parent.children(recursive=True)]
            for conn in proc.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN}


def test_gui_started_on_the_default_host_listens_on_loopback_only(studio_home, free_port):
    port = free_port()
    log_path = studio_home / "gui.log"
    with open(log_path, "wb") as log:
        # --port only because 7860 may be taken on a shared machine; the host is the default.
        proc = subprocess.Popen([sys.executable, "gui.py", "--port", str(port)], cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def serving() -> bool:
            if proc.poll() is not None:
                raise AssertionError("gui.py exited:\n" + log_path.read_text(errors="replace"))
            return any(p == port for _, p in listening_addresses(proc.pid))

        wait_until(serving, timeout=120, what="gui.py to listen")
        assert listening_addresses(proc.pid) == {("127.0.0.1", port)}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


class FakeApp:
    """Stands in for the Gradio app: records how gui.main launches it."""
    local_url, share_url = "http://127.0.0.1:0/", None

    def launch(self, **kwargs):
        self.launched = kwargs

    def block_thread(self):
        pass


@pytest.mark.parametrize("argv, host", [([], "127.0.0.1"), (["--host", "0.0.0.0", "--auth", "me:pw"], "0.0.0.0")])
def test_gradio_is_launched_on_the_host_given_defaulting_to_loopback(argv, host, monkeypatch, tmp_path):
    import tabs.app

    app = FakeApp()
    monkeypatch.setattr(tabs.app, "build_app", lambda: app)
    monkeypatch.chdir(tmp_path)  # gui.main moves to the repo; this puts the tests' cwd back after
    gui.main(argv)
    assert app.launched["server_name"] == host and app.launched["share"] is False
    assert app.launched["auth"] == (("me", "pw") if "--auth" in argv else None)


def test_tensorboard_is_started_on_loopback(tmp_path):
    from core.jobs.tensorboard import tensorboard_command

    argv = tensorboard_command(tmp_path, 6006)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


# --- pickled checkpoints do not run ----------------------------------------------------------

class Payload:
    """Unpickles into a call of `func(*args)`: what a malicious checkpoint carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payload(kind: str, marker: Path) -> Payload:
    if kind == "exec":
        return Payload(exec, f"open({str(marker)!r}, 'w').close()")
    return Payload(open, str(marker), "w")


def malicious_checkpoint(path: Path, kind: str, marker: Path, zip_format: bool) -> Path:
    """An SD-looking .ckpt whose state dict also holds a payload that creates `marker`."""
    state_dict = {"cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(4),
                  "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
                  "first_stage_model.encoder.conv_in.weight": payload(kind, marker)}
    torch.save({"state_dict": state_dict}, path, _use_new_zipfile_serialization=zip_format)
    return path


def checkpoint_loaders(tmp_path: Path) -> dict:
    """Every loader of the app that accepts a .ckpt, as name -> function of the path."""
    from safetensors.torch import save_file

    from core.models.loading import load_vae, model_arch
    from core.models.lora import read_lora
    from core.models.sd import inspect_base_model, load_sd_model

    base = tmp_path / "base-vae.safetensors"  # a harmless base, so the VAE file is what gets read
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(base))
    return {"load_sd_model": load_sd_model, "load_vae(vae_path=)": lambda path: load_vae(base, path),
            "model_arch": model_arch, "inspect_base_model (start checks)": inspect_base_model,
            "read_lora": lambda path: read_lora(path, sdxl=False)}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["exec", "open"])
def test_a_ckpt_carrying_code_is_refused_and_nothing_in_it_runs(kind, zip_format, tmp_path):
    marker = tmp_path / "RAN"
    ckpt = malicious_checkpoint(tmp_path / "model.ckpt", kind, marker, zip_format)
    for name, load in checkpoint_loaders(tmp_path).items():
        with pytest.raises(ValueError) as refused:
            load(ckpt)
        message = str(refused.value)
        assert "model.ckpt" in message and "run code" in message and "\x1b" not in message, f"{name}: {message}"
        assert not marker.exists(), f"{name} ran the checkpoint's code"

    torch.load(ckpt, weights_only=False)  # the control: unpickled in full, the payload does run
    assert marker.exists()


def test_a_training_state_carrying_code_is_refused_before_accelerate_unpickles_it(tmp_path):
    """accelerate loads a state's .pkl files with weights_only=False: we check them first."""
    import numpy as np
    import torch

    from core.train.checkpoints import check_state_files

    marker = tmp_path / "PWNED"
    folder = tmp_path / "model-step00000002-state"
    folder.mkdir()
    torch.save({"step": torch.tensor(2)}, folder / "optimizer.bin")
    torch.save([np.random.get_state(), torch.get_rng_state()], folder / "random_states_0.pkl")
    check_state_files(folder)  # what a real state holds passes

    torch.save({"decay": payload("exec", marker)}, folder / "custom_checkpoint_0.pkl")
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl holds Python objects"):
        check_state_files(folder)
    assert not marker.exists()
