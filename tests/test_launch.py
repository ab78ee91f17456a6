"""launch.sh, run from a copy in a folder whose path has a space and non-ASCII characters.

The copy gets a stand-in gui.py that prints its arguments and environment, and a tiny venv
without pip (created in well under a second): the stamp that launch.sh itself computes is
written into it, so a launch that tried to run pip would fail.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COPIED = ["launch.sh", "requirements.txt", "requirements-cuda.txt", "requirements-test.txt", "core/launcher.py"]
# Set by launch.sh itself or read by it: the tests must not inherit them from the suite.
CONTROLLED_ENV = [
    "LAUNCH_DRY_RUN", "LAUNCH_VARIANT", "TORCH_CUDA", "PYTHON", "CHROMIUM_PATH",
    "HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED", "PYTHONUTF8",
]
TORCH_INDEX = "https://download.pytorch.org/whl/"

STAND_IN_GUI = """\
import json, os, sys
names = ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED", "PYTHONUTF8")
print("GUI " + json.dumps({
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "env": {name: os.environ.get(name) for name in names},
}))
"""

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("bash") is None, reason="launch.sh needs bash"
)


def run_launch(folder, *args, variant="cpu", **env):
    full_env = {k: v for k, v in os.environ.items() if k not in CONTROLLED_ENV}
    if variant:
        full_env["LAUNCH_VARIANT"] = variant
    full_env.update(env)
    result = subprocess.run(
        ["bash", str(folder / "launch.sh"), *args],
        cwd=folder.parent,  # not the script's folder: launch.sh must find its own
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result


def new_stamp(dry_run_output):
    lines = [line for line in dry_run_output.splitlines() if line.startswith("[launch] new stamp: ")]
    assert len(lines) == 1, dry_run_output
    return lines[0].removeprefix("[launch] new stamp: ")


def make_copy(folder):
    folder.mkdir(parents=True)
    for name in COPIED:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, folder / name)
    (folder / "gui.py").write_text(STAND_IN_GUI, encoding="utf-8")
    return folder


@pytest.fixture
def launch_copy(tmp_path):
    """A copy with an up-to-date (but pip-less) venv, as after a first install."""
    folder = make_copy(tmp_path / "my dir é ü")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    dry = run_launch(folder, LAUNCH_DRY_RUN="1")
    assert dry.returncode == 0, dry.stderr
    (folder / "venv" / ".requirements-stamp").write_text(new_stamp(dry.stdout) + "\n")
    return folder


def test_forwards_arguments_and_environment_without_reinstalling(launch_copy):
    args = ["--port", "7861", "two words", 'a "quoted" arg', "it's", "$HOME", "*", "é ü", ""]
    result = run_launch(launch_copy, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requirements unchanged" in result.stdout
    assert "skipping install" in result.stdout
    gui_lines = [line for line in result.stdout.splitlines() if line.startswith("GUI ")]
    assert len(gui_lines) == 1, result.stdout
    report = json.loads(gui_lines[0][len("GUI "):])
    assert report["argv"] == args
    assert Path(report["cwd"]) == launch_copy
    assert report["env"] == {
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUTF8": "1",
    }


def test_changed_requirements_file_triggers_install(launch_copy):
    stamp_file = launch_copy / "venv" / ".requirements-stamp"
    stamp_before = stamp_file.read_text()
    with open(launch_copy / "requirements.txt", "a", encoding="utf-8") as f:
        f.write("tqdm==4.67.1\n")

    result = run_launch(launch_copy, LAUNCH_DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert "skipping install" not in result.stdout
    assert "would install requirements (cpu)" in result.stdout
    assert new_stamp(result.stdout) != stamp_before.strip()
    assert stamp_file.read_text() == stamp_before  # a dry run changes nothing
    assert "GUI " not in result.stdout


def test_gpu_variant_needs_its_own_install(launch_copy):
    result = run_launch(launch_copy, LAUNCH_DRY_RUN="1", variant="cuda")  # no nvidia-smi: the newest build
    assert result.returncode == 0, result.stderr
    assert "would install requirements (cu130)" in result.stdout
    assert "requirements-cuda.txt" in result.stdout
    assert TORCH_INDEX not in result.stdout  # PyPI's Linux torch is the cu130 build


def fake_nvidia_smi(tmp_path, answer, rc=0):
    """A PATH holding an nvidia-smi that prints ANSWER (name, compute_cap, driver lines)."""
    fake_bin = tmp_path / "smi-bin"
    fake_bin.mkdir(exist_ok=True)
    smi = fake_bin / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{answer}\nEOF\nexit {rc}\n")
    smi.chmod(0o755)
    return f"{fake_bin}{os.pathsep}{os.environ['PATH']}"


def test_new_gpu_installs_pypis_cuda_13_build(launch_copy, tmp_path):
    path = fake_nvidia_smi(tmp_path, "NVIDIA GeForce RTX 4090, 8.9, 580.95.05")
    result = run_launch(launch_copy, LAUNCH_DRY_RUN="1", variant=None, PATH=path)
    assert result.returncode == 0, result.stderr
    assert "RTX 4090 (sm_89)" in result.stderr and "cu130" in result.stderr  # what was chosen and why
    assert "would install requirements (cu130)" in result.stdout
    assert TORCH_INDEX not in result.stdout
    assert "pip install --disable-pip-version-check -r" in result.stdout
    assert new_stamp(result.stdout).endswith(" cu130")


def test_old_gpu_installs_the_cuda_12_6_build_from_pytorchs_index(launch_copy, tmp_path):
    path = fake_nvidia_smi(tmp_path, "NVIDIA GeForce GTX 1080, 6.1, 566.03")
    result = run_launch(launch_copy, LAUNCH_DRY_RUN="1", variant=None, PATH=path)
    assert result.returncode == 0, result.stderr
    assert "GTX 1080 (sm_61)" in result.stderr and "cu126" in result.stderr
    assert "would install requirements (cu126)" in result.stdout
    pip_lines = [line for line in result.stdout.splitlines() if "pip install" in line]
    assert "torch==2.13.0+cu126 --index-url " + TORCH_INDEX + "cu126" in pip_lines[0], result.stdout
    assert "-r " in pip_lines[1] and "requirements.txt" in pip_lines[1]
    assert "requirements-cuda.txt" in pip_lines[2]
    assert new_stamp(result.stdout).endswith(" cu126")

    # LAUNCH_VARIANT is read without regard to case, and keeps the detected build
    result = run_launch(launch_copy, LAUNCH_DRY_RUN="1", variant="CUDA", PATH=path)
    assert result.returncode == 0, result.stderr
    assert "would install requirements (cu126)" in result.stdout


def test_old_driver_is_refused_with_what_to_do(launch_copy, tmp_path):
    stamp_before = (launch_copy / "venv" / ".requirements-stamp").read_text()
    path = fake_nvidia_smi(tmp_path, "NVIDIA GeForce RTX 3060, 8.6, 516.94")
    result = run_launch(launch_copy, variant=None, PATH=path)
    assert result.returncode == 1
    assert "driver 516.94 is too old" in result.stderr
    assert "525.60.13 or newer" in result.stderr and "LAUNCH_VARIANT=cpu" in result.stderr
    assert "nothing was installed" in result.stderr
    assert "GUI " not in result.stdout
    assert (launch_copy / "venv" / ".requirements-stamp").read_text() == stamp_before

    result = run_launch(launch_copy, variant="cpu", PATH=path)  # the way out it names
    assert result.returncode == 0, result.stderr
    assert "requirements unchanged" in result.stdout and "GUI " in result.stdout


def test_bad_launch_variant_is_refused(launch_copy):
    result = run_launch(launch_copy, LAUNCH_DRY_RUN="1", variant="gpu")
    assert result.returncode == 1
    assert "LAUNCH_VARIANT must be cpu or cuda, not 'gpu'" in result.stderr


def test_failing_nvidia_smi_means_cpu(launch_copy, tmp_path):
    path = fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the driver", rc=9)
    result = run_launch(launch_copy, variant=None, PATH=path)
    assert result.returncode == 0, result.stderr
    assert "requirements unchanged" in result.stdout and "GUI " in result.stdout


def test_test_mode_adds_test_requirements_and_forwards_pytest_args(launch_copy):
    result = run_launch(launch_copy, "test", "-k", "two words", LAUNCH_DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert "requirements unchanged" in result.stdout  # the main stamp still matches
    assert "would install test requirements (cpu)" in result.stdout
    assert "-m pytest tests -k two\\ words" in result.stdout


def test_python_candidates_are_run_not_just_found(tmp_path):
    folder = make_copy(tmp_path / "no venv ü")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name in ("python3.11", "python3.12", "python3.13"):  # like pyenv shims that fail
        shim = fake_bin / name
        shim.write_text("#!/bin/sh\necho 'pyenv: command not found' >&2\nexit 127\n")
        shim.chmod(0o755)
    (fake_bin / "python3").symlink_to(os.path.realpath(sys.executable))
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"

    result = run_launch(folder, LAUNCH_DRY_RUN="1", PATH=path)
    assert result.returncode == 0, result.stderr
    assert f"would create venv with {fake_bin / 'python3'}" in result.stdout
    assert not (folder / "venv").exists()

    result = run_launch(folder, LAUNCH_DRY_RUN="1", PYTHON=str(fake_bin / "python3.12"))
    assert result.returncode == 1
    assert "python3.12 is not a usable Python: pyenv: command not found" in result.stderr
    assert "PYTHON=" in result.stderr and "cannot be used" in result.stderr


def test_a_python_without_wheels_for_the_pins_is_refused_with_what_to_install(tmp_path):
    folder = make_copy(tmp_path / "old python")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    site = tmp_path / "site"  # makes the real interpreter report 3.10
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.version_info = (3, 10, 4, 'final', 0)\n")
    for name in ("python3.11", "python3.12", "python3.13", "python3", "python"):  # every candidate is it
        old = fake_bin / name
        old.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{os.path.realpath(sys.executable)}" "$@"\n')
        old.chmod(0o755)
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}"
    result = run_launch(folder, LAUNCH_DRY_RUN="1", PATH=path)
    assert result.returncode == 1
    assert "Python 3.10 cannot run the studio" in result.stderr
    assert "Python 3.11, 3.12 or 3.13 only" in result.stderr
    assert "no usable Python found" in result.stderr and "apt-get install python3.11" in result.stderr
    assert not (folder / "venv").exists()


@pytest.mark.skipif(
    not (Path(sys.prefix) / ".requirements-stamp").is_file(),
    reason="the suite does not run in a venv made by launch.sh",
)
def test_venv_made_by_launch_test_serves_plain_launch(tmp_path):
    """After `./launch.sh test`, a plain `./launch.sh` must not run pip again."""
    folder = make_copy(tmp_path / "real venv é")
    (folder / "venv").symlink_to(sys.prefix)
    # The variant launch.sh chose for the suite (GPU detection, or the user's override).
    result = run_launch(folder, LAUNCH_DRY_RUN="1", variant=os.environ.get("LAUNCH_VARIANT"))
    assert result.returncode == 0, result.stderr
    assert "requirements unchanged" in result.stdout, result.stdout


def test_no_usable_build_leaves_no_venv_behind(tmp_path):
    folder = make_copy(tmp_path / "fresh (old gpu)")
    path = fake_nvidia_smi(tmp_path, "Tesla K80, 3.7, 470.82.01")
    result = run_launch(folder, variant=None, PATH=path, PYTHON=sys.executable)
    assert result.returncode == 1
    assert "no CUDA build of this PyTorch supports Tesla K80 (sm_37)" in result.stderr
    assert not (folder / "venv").exists()


FAKE_PIP = """\
import json, os, sys
args = sys.argv[1:]
print("PIP " + json.dumps(args))
sys.exit(1 if args[:2] == ["show", "-q"] and os.environ.get("FAKE_GPU_ONNXRUNTIME") != "1" else 0)
"""


@pytest.mark.parametrize("gpu_onnxruntime", [True, False])
def test_back_on_the_cpu_build_the_gpu_onnxruntime_goes(launch_copy, gpu_onnxruntime):
    """onnxruntime-gpu (a CUDA install's) and onnxruntime ship one module: the CPU install removes both
    before requirements.txt puts onnxruntime back, and leaves a venv without the GPU one alone."""
    site = next((launch_copy / "venv" / "lib").glob("python3*/site-packages"))
    (site / "pip").mkdir()
    (site / "pip" / "__init__.py").write_text("")
    (site / "pip" / "__main__.py").write_text(FAKE_PIP)
    (launch_copy / "venv" / ".requirements-stamp").write_text("the stamp of a CUDA install\n")
    result = run_launch(launch_copy, FAKE_GPU_ONNXRUNTIME="1" if gpu_onnxruntime else "0")
    assert result.returncode == 0, result.stdout + result.stderr
    pip = [json.loads(line[len("PIP "):]) for line in result.stdout.splitlines() if line.startswith("PIP ")]
    uninstall = ["uninstall", "-y", "onnxruntime", "onnxruntime-gpu"]
    assert (pip[0] == uninstall) is gpu_onnxruntime and (uninstall in pip) is gpu_onnxruntime
    assert pip[-1][:2] == ["install", "--disable-pip-version-check"] and pip[-1][-1].endswith("requirements.txt")
