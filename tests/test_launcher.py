"""core/launcher.py: what the launchers decide (Python, torch pin, CUDA build, stamp), run as the
launchers run it: a script, with fake nvidia-smi programs standing in for the driver."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import launcher

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "core" / "launcher.py"

RTX_4090 = "NVIDIA GeForce RTX 4090, 8.9, 580.95.05"
GTX_1080 = "NVIDIA GeForce GTX 1080, 6.1, 580.95.05"
TITAN_V = "NVIDIA TITAN V, 7.0, 570.86.10"
RTX_5090 = "NVIDIA GeForce RTX 5090, 12.0, 581.57"
TESLA_K80 = "Tesla K80, 3.7, 470.82.01"


def run(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("LAUNCH_VARIANT", "TORCH_CUDA")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          timeout=60)


@pytest.fixture
def fake_smi(tmp_path):
    """fake_smi(stdout, rc=0) -> path of an nvidia-smi that prints stdout and exits with rc; it records
    its arguments in args.txt beside it."""
    if os.name == "nt":
        pytest.skip("the fake nvidia-smi is a shell script")

    def make(stdout, rc=0, name="nvidia-smi"):
        (tmp_path / "answer.txt").write_text(stdout, encoding="utf-8")
        smi = tmp_path / name
        smi.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/args.txt"\ncat "{tmp_path}/answer.txt"\n'
                       f"exit {rc}\n")
        smi.chmod(0o755)
        return smi
    return make


def choose(smi, **env):
    result = run("choose-build", "--smi", str(smi), env=env)
    return result.returncode, result.stdout.strip(), result.stderr


# --- choose-build ---------------------------------------------------------------------------------

def test_new_gpu_gets_the_newest_cuda_build_and_nvidia_smi_is_asked_the_right_question(fake_smi, tmp_path):
    rc, out, err = choose(fake_smi(RTX_4090 + "\n"))
    assert (rc, out) == (0, "cu130"), err
    assert "NVIDIA GeForce RTX 4090 (sm_89) with driver 580.95.05" in err and "cu130" in err
    assert (tmp_path / "args.txt").read_text().split() == [
        "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]


@pytest.mark.parametrize("line", [GTX_1080, TITAN_V, "NVIDIA GeForce GTX 970, 5.2, 560.94"])
def test_maxwell_pascal_volta_get_the_cuda_12_6_build(fake_smi, line):
    rc, out, err = choose(fake_smi(line + "\n"))
    assert (rc, out) == (0, "cu126"), err
    assert "CUDA 12.6" in err


def test_blackwell_gets_cuda_13(fake_smi):
    rc, out, err = choose(fake_smi(RTX_5090 + "\r\n"))  # Windows' nvidia-smi ends lines with CRLF
    assert (rc, out) == (0, "cu130"), err


def test_mixed_old_and_new_gpus_get_the_build_that_serves_both(fake_smi):
    rc, out, err = choose(fake_smi(GTX_1080 + "\n" + RTX_4090 + "\n"))
    assert (rc, out) == (0, "cu126"), err


def test_no_build_serves_pascal_and_blackwell_together(fake_smi):
    rc, out, err = choose(fake_smi(GTX_1080 + "\n" + RTX_5090 + "\n"))
    assert (rc, out) == (3, "none")
    assert "no single CUDA build" in err and "GTX 1080 (sm_61)" in err and "RTX 5090 (sm_120)" in err
    assert "LAUNCH_VARIANT=cpu" in err


def test_old_driver_says_which_driver_to_install(fake_smi):
    rc, out, err = choose(fake_smi("NVIDIA GeForce RTX 3060, 8.6, 516.94\n"))
    assert (rc, out) == (3, "none")
    assert "driver 516.94 is too old" in err
    assert "Update the NVIDIA driver to version 525.60.13 or newer" in err  # Linux numbers here
    assert "LAUNCH_VARIANT=cpu" in err


def test_a_driver_between_cuda_12_and_13_gets_cuda_12_6_on_a_new_gpu(fake_smi):
    rc, out, err = choose(fake_smi("NVIDIA GeForce RTX 4070, 8.9, 560.35.03\n"))
    assert (rc, out) == (0, "cu126"), err


def test_too_old_gpu_is_refused_in_plain_words(fake_smi):
    rc, out, err = choose(fake_smi(TESLA_K80 + "\n"))
    assert (rc, out) == (3, "none")
    assert "no CUDA build of this PyTorch supports Tesla K80 (sm_37)" in err


def test_driver_too_old_to_report_compute_capability(fake_smi):
    smi = fake_smi('Field "compute_cap" is not a valid field to query.\n', rc=2)
    rc, out, err = choose(smi)
    assert (rc, out) == (3, "none")
    assert "driver is too old" in err and "LAUNCH_VARIANT=cpu" in err


@pytest.mark.parametrize("answer, rc", [
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", 9),
    ("", 0),
    ("garbage without commas\n", 0),
    ("NVIDIA GeForce RTX 4090, [N/A], 580.95.05\n", 0),
])
def test_failing_or_unreadable_nvidia_smi_means_cpu(fake_smi, answer, rc):
    code, out, err = choose(fake_smi(answer, rc=rc))
    assert (code, out) == (0, "cpu"), err
    assert "CPU build" in err


def test_no_nvidia_smi_means_cpu(tmp_path):
    code, out, err = choose(tmp_path / "missing" / "nvidia-smi")
    assert (code, out) == (0, "cpu"), err


def test_overrides(fake_smi):
    smi = fake_smi(GTX_1080 + "\n")
    assert choose(smi, LAUNCH_VARIANT="CPU")[:2] == (0, "cpu")
    assert choose(smi, LAUNCH_VARIANT="CUDA")[:2] == (0, "cu126")  # case does not matter
    assert choose(smi, LAUNCH_VARIANT="cuda", TORCH_CUDA="cu132")[:2] == (0, "cu132")
    assert choose(smi, TORCH_CUDA="cu130")[:2] == (0, "cu130")  # the user's choice wins on a GPU machine
    rc, out, err = choose(smi, LAUNCH_VARIANT="gpu")
    assert rc == 2 and out == "" and "LAUNCH_VARIANT must be cpu or cuda, not 'gpu'" in err
    rc, out, err = choose(smi, TORCH_CUDA="13.0")
    assert rc == 2 and "TORCH_CUDA must name" in err


def test_forced_cuda_without_a_gpu_takes_the_newest_build(tmp_path, fake_smi):
    assert choose(tmp_path / "missing", LAUNCH_VARIANT="cuda")[:2] == (0, "cu130")
    assert choose(tmp_path / "missing", TORCH_CUDA="cu126")[:2] == (0, "cpu")  # TORCH_CUDA alone: GPU machines only


def test_windows_driver_minimums():
    gpu = launcher.Gpu("NVIDIA GeForce GTX 1080", (6, 1), (528, 24), "528.24")
    with pytest.raises(launcher.LaunchError) as refused:
        launcher.pick_build([gpu], "Windows")
    assert refused.value.code == 3 and "528.33 or newer" in str(refused.value)
    assert launcher.pick_build([gpu._replace(driver=(528, 33))], "Windows")[0] == "cu126"
    assert launcher.pick_build([gpu._replace(driver=(527, 41))], "Linux")[0] == "cu126"


def test_the_build_table_is_newest_first_and_sane():
    cudas = [tuple(int(x) for x in build.cuda.split(".")) for build in launcher.CUDA_BUILDS]
    assert cudas == sorted(cudas, reverse=True)
    assert {build.tag for build in launcher.CUDA_BUILDS} >= {"cu126", launcher.PYPI_LINUX_BUILD}
    for build in launcher.CUDA_BUILDS:
        assert build.tag == "cu" + build.cuda.replace(".", "")


# --- torch-index, variant-of, stamp ---------------------------------------------------------------

def test_torch_index_only_for_builds_pypi_does_not_serve():
    assert launcher.torch_index("cu130", "Linux", "x86_64") == ""
    assert launcher.torch_index("cu126", "Linux", "x86_64") == "https://download.pytorch.org/whl/cu126"
    assert launcher.torch_index("cu130", "Windows", "AMD64") == "https://download.pytorch.org/whl/cu130"
    assert launcher.torch_index("cpu", "Windows", "AMD64") == ""
    assert launcher.torch_index("cpu", "Linux", "x86_64") == ""
    result = run("torch-index", "cu126")
    assert result.returncode == 0 and result.stdout == "https://download.pytorch.org/whl/cu126\n"


def test_variant_of():
    assert run("variant-of", "cu126").stdout == "cuda\n"
    assert run("variant-of", "cpu").stdout == "cpu\n"
    bad = run("variant-of", "cuda")
    assert bad.returncode == 2 and "not a torch build" in bad.stderr


def test_stamp_ignores_line_endings_and_names_python_and_build(tmp_path):
    unix, windows = tmp_path / "a.txt", tmp_path / "b.txt"
    unix.write_bytes(b"torch==2.13.0\nnumpy==2.4.6\n")
    windows.write_bytes(b"torch==2.13.0\r\nnumpy==2.4.6\r\n")
    first, second = run("stamp", "cu126", str(unix)).stdout, run("stamp", "cu126", str(windows)).stdout
    assert first == second
    digest, python, build = first.split()
    assert len(digest) == 64 and python == "python" + ".".join(map(str, sys.version_info[:3])) and build == "cu126"
    assert run("stamp", "cu130", str(unix)).stdout != first
    missing = run("stamp", "cpu", str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and "nope.txt" in missing.stderr


# --- torch-pin ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, pin", [
    ("torch==2.13.0\n", "torch==2.13.0"),
    ("# torch==1.0 is old\ntorch==2.13.0  # the pinned build\n", "torch==2.13.0"),
    ('torch == 2.13.0 ; platform_system != "Darwin"\n', "torch==2.13.0"),
    ("numpy==2.4.6\r\ntorch==2.13.0\r\n", "torch==2.13.0"),
    ("\ufefftorch==2.13.0\n", "torch==2.13.0"),
    ("torchvision==0.28.0\nTorch[opt-einsum]>=2.13,<2.14\n", "Torch>=2.13,<2.14"),
    ("--extra-index-url https://x/torch\ntorch==2.13.0\n", "torch==2.13.0"),
])
def test_torch_pin(tmp_path, text, pin):
    path = tmp_path / "requirements.txt"
    path.write_bytes(text.encode("utf-8"))
    result = run("torch-pin", str(path))
    assert (result.returncode, result.stdout) == (0, pin + "\n"), result.stderr


@pytest.mark.parametrize("text", ["numpy==2.4.6\n# torch==2.13.0\ntorchvision==0.28\n", ""])
def test_no_torch_pin_is_an_error(tmp_path, text):
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    result = run("torch-pin", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert "no torch requirement" in result.stderr


def test_the_projects_own_pin_is_found():
    assert run("torch-pin", str(REPO / "requirements.txt")).stdout.startswith("torch==")


# --- python-ok ------------------------------------------------------------------------------------

def test_python_ok_for_the_python_running_the_suite():
    ok = run("python-ok")
    assert ok.returncode == (0 if sys.version_info[:2] in launcher.SUPPORTED_PYTHONS else 1), ok.stderr


@pytest.mark.parametrize("version", [(3, 10), (3, 9), (3, 14)])
def test_python_versions_without_wheels_are_refused(version):
    problem = launcher.python_problem(version, bits=64, free_threaded=False)
    assert problem and "Python 3.11, 3.12 or 3.13 only" in problem
    assert launcher.python_problem((3, 12), bits=32, free_threaded=False).startswith("this Python is 32-bit")
    assert "free-threaded" in launcher.python_problem((3, 13), bits=64, free_threaded=True)
    assert launcher.python_problem((3, 13), bits=64, free_threaded=False) is None


@pytest.mark.parametrize("system, words", [
    ("Windows", "python.org"), ("Linux", "apt-get install python3.11 python3.11-venv"), ("Darwin", "brew")])
def test_python_advice_says_what_to_install(system, words):
    assert words in launcher.what_to_install(system)


def test_old_python_refusal_names_what_to_install(tmp_path):
    """Run under a Python the studio refuses (faked by a sitecustomize that shrinks the version)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.version_info = (3, 10, 4, 'final', 0)\n")
    result = run("python-ok", env={"PYTHONPATH": str(site)})
    assert result.returncode == 1
    assert "Python 3.10 cannot run the studio" in result.stderr and "install" in result.stderr.lower()


@pytest.mark.parametrize("build, pin", [("cu126", "torch==2.13.0+cu126"), ("cu130", "torch==2.13.0+cu130"),
                                        ("", "torch==2.13.0")])
def test_a_pin_for_a_build_names_its_local_version(tmp_path, build, pin):
    """torch==2.13.0 accepts an installed 2.13.0+cu130: a venv moved to a GTX 1080 would keep the build
    that cannot run there. The build's own pin makes pip replace it."""
    path = tmp_path / "requirements.txt"
    path.write_text("torch==2.13.0  # pinned\n")
    result = run("torch-pin", str(path), *([build] if build else []))
    assert (result.returncode, result.stdout) == (0, pin + "\n"), result.stderr
