"""What the one-click launchers decide, written once for launch.sh and launch.bat.

Standard library only, and run as a script by the system's Python before the venv exists:

    python core/launcher.py python-ok                    exit 0 if this Python can run the studio
    python core/launcher.py torch-pin REQUIREMENTS_FILE [BUILD]
                                                         print the torch requirement (torch==2.13.0; with a
                                                         build from PyTorch's index: torch==2.13.0+cu126)
    python core/launcher.py choose-build [--smi PATH]    print the torch build: cpu, cu126, cu130, ...
    python core/launcher.py torch-index BUILD            print the wheel index for BUILD ('' = PyPI's)
    python core/launcher.py variant-of BUILD             print cpu or cuda
    python core/launcher.py stamp BUILD FILE...          print the requirements stamp

What the script uses goes to stdout; explanations go to stderr, prefixed with "[launch] ".
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from collections import namedtuple

# Every pinned package (requirements*.txt) publishes wheels for these: numpy 2.4 and pandas 3 start
# at 3.11; torch 2.13, onnxruntime 1.32, onnx 1.23 and the rest have 3.13 wheels. 3.14 is left out
# until every pin is checked for it.
SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))
RECOMMENDED_PYTHON = (3, 11)

# The CUDA builds of the pinned torch (2.13) for x86_64 Linux and Windows, newest first, from
# PyTorch's CUDA support matrix (RELEASE.md): the GPU architectures each wheel holds code for, and
# the oldest NVIDIA driver each CUDA version runs on (minor version compatibility: CUDA 13.x needs
# a driver >= 580, CUDA 12.x >= 525.60.13 on Linux and >= 528.33 on Windows). cu132 is also
# published for torch 2.13, as an experimental build: TORCH_CUDA=cu132 picks it.
CudaBuild = namedtuple("CudaBuild", "tag cuda arches min_driver_linux min_driver_windows")
CUDA_BUILDS = (
    CudaBuild("cu130", "13.0", ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)), (580,), (580,)),
    CudaBuild("cu126", "12.6", ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0)), (525, 60, 13), (528, 33)),
)
# The build `pip install torch` gets from PyPI: on Linux x86_64 the cu130 one (it runs on a CPU too);
# on Windows and macOS a CPU-only build.
PYPI_LINUX_BUILD = "cu130"
TORCH_INDEX = "https://download.pytorch.org/whl/"
SMI_QUERY = ["--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
SMI_TIMEOUT_S = 20

Gpu = namedtuple("Gpu", "name capability driver driver_text")  # (8, 9), (560, 35, 3), "560.35.03"


class LaunchError(Exception):
    """A refusal with its exit code; the message is for a person."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    for line in message.splitlines():
        print("[launch] " + line, file=sys.stderr)


def version_text(version) -> str:
    return ".".join(str(part) for part in version)


# --- python-ok -------------------------------------------------------------------------------------

def python_problem(version=None, bits=None, free_threaded=None) -> str | None:
    """Why this Python cannot run the studio, or None when it can."""
    version = tuple(version or sys.version_info[:2])
    bits = bits or struct.calcsize("P") * 8
    if free_threaded is None:
        free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    names = ", ".join(version_text(v) for v in SUPPORTED_PYTHONS[:-1]) + " or " + version_text(SUPPORTED_PYTHONS[-1])
    if version not in SUPPORTED_PYTHONS:
        return "Python {} cannot run the studio: its packages publish wheels for Python {} only.".format(
            version_text(version), names)
    if bits != 64:
        return "this Python is {}-bit; PyTorch needs a 64-bit Python ({}).".format(bits, names)
    if free_threaded:
        return "this is a free-threaded Python ({}t); use the standard build of Python {}.".format(
            version_text(version), version_text(version))
    return None


def what_to_install(system=None) -> str:
    system = system or platform.system()
    want = version_text(RECOMMENDED_PYTHON)
    if system == "Windows":
        return ("Install Python {0} (64-bit) from https://www.python.org/downloads/windows/ and tick "
                "\"Add python.exe to PATH\" (or: winget install Python.Python.{0}),\n"
                "or set PYTHON=C:\\path\\to\\python.exe to the one to use.").format(want)
    if system == "Darwin":
        return ("Install Python {0}: brew install python@{0}\n"
                "or set PYTHON=/path/to/python{0} to the one to use.").format(want)
    return ("Install Python {0}, e.g. on Debian/Ubuntu: sudo apt-get install python{0} python{0}-venv\n"
            "or set PYTHON=/path/to/python{0} to the one to use.").format(want)


def python_ok() -> int:
    problem = python_problem()
    if problem:
        say("{} ({})\n{}".format(problem, sys.executable, what_to_install()))
        return 1
    return 0


# --- torch-pin -------------------------------------------------------------------------------------

REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)")


def requirement_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_pin(text: str) -> str:
    """The torch requirement of a requirements file's text, without comment or environment marker."""
    pins = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        match = REQUIREMENT.match(line)
        if not line or line.startswith("-") or not match or requirement_name(match.group(1)) != "torch":
            continue
        pins.append(match.group(1) + re.sub(r"\s+", "", match.group(3)))
    if not pins:
        raise LaunchError("no torch requirement (a line like torch==2.13.0) was found", 1)
    if len(set(pins)) > 1:
        raise LaunchError("more than one torch requirement: " + ", ".join(pins), 1)
    return pins[0]


def pin_for_build(pin: str, build: str) -> str:
    """The pin naming the build's local version (torch==2.13.0+cu126): pip then replaces a torch of another
    build that the bare version (torch==2.13.0) would accept as installed, when the GPU or driver changed."""
    if build and re.fullmatch(r"torch==[0-9][0-9A-Za-z.]*", pin):
        return pin + "+" + build
    return pin


def torch_pin_command(path: str, build: str = "") -> int:
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        print(pin_for_build(torch_pin(text), build))
    except OSError as exc:
        say("error: cannot read {}: {}".format(path, exc.strerror or exc))
        return 1
    except LaunchError as exc:
        say("error: {}: {}".format(path, exc))
        return exc.code
    return 0


# --- choose-build ----------------------------------------------------------------------------------

def parse_version(text: str) -> tuple:
    parts = text.strip().split(".")
    if not text.strip() or not all(part.isdigit() for part in parts):
        raise ValueError("not a version: {!r}".format(text))
    return tuple(int(part) for part in parts)


def parse_gpus(output: str) -> list:
    """nvidia-smi's `name, compute_cap, driver_version` lines -> [Gpu]; ValueError when unreadable."""
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.rsplit(",", 2)]
        if len(fields) != 3:
            raise ValueError("unexpected line: {!r}".format(line.strip()))
        name, capability, driver = fields
        capability = parse_version(capability)
        if len(capability) != 2:
            raise ValueError("unexpected compute capability: {!r}".format(fields[1]))
        gpus.append(Gpu(name, capability, parse_version(driver), driver))
    if not gpus:
        raise ValueError("no GPU listed")
    return gpus


def supports(build: CudaBuild, capability: tuple) -> bool:
    """A GPU runs code built for an architecture of its own major version and an equal or lower minor."""
    return any(major == capability[0] and minor <= capability[1] for major, minor in build.arches)


def min_driver(build: CudaBuild, system: str) -> tuple:
    return build.min_driver_windows if system == "Windows" else build.min_driver_linux


def sm(capability: tuple) -> str:
    return "sm_{}{}".format(*capability)


def pick_build(gpus: list, system: str) -> tuple:
    """(tag, why) for the newest CUDA build that runs every GPU on the installed driver, else
    LaunchError(3) that says what to do."""
    driver, driver_text = min((gpu.driver, gpu.driver_text) for gpu in gpus)
    listing = ", ".join("{} ({})".format(gpu.name, sm(gpu.capability)) for gpu in gpus)
    for build in CUDA_BUILDS:
        if all(supports(build, gpu.capability) for gpu in gpus) and driver >= min_driver(build, system):
            return build.tag, "{} with driver {}: using PyTorch's CUDA {} build ({}).".format(
                listing, driver_text, build.cuda, build.tag)
    for_gpus = [b for b in CUDA_BUILDS if all(supports(b, gpu.capability) for gpu in gpus)]
    if for_gpus:
        need = for_gpus[-1]  # the build with the oldest driver requirement that runs these GPUs
        advice = ("Update the NVIDIA driver to version {} or newer (https://www.nvidia.com/drivers), "
                  "then run the launcher again.").format(version_text(min_driver(need, system)))
        problem = "driver {} is too old for the CUDA {} build of PyTorch that supports {}.".format(
            driver_text, need.cuda, listing)
    else:
        unsupported = [gpu for gpu in gpus if not any(supports(b, gpu.capability) for b in CUDA_BUILDS)]
        if unsupported:
            advice = "Run on the CPU (slow), or use a newer NVIDIA GPU."
            problem = "no CUDA build of this PyTorch supports {}.".format(
                ", ".join("{} ({})".format(gpu.name, sm(gpu.capability)) for gpu in unsupported))
        else:
            advice = ("Use only some of them (set CUDA_VISIBLE_DEVICES and TORCH_CUDA=cu126 for the older "
                      "ones, or TORCH_CUDA=cu130 for the newer ones), or run on the CPU.")
            problem = "no single CUDA build of PyTorch supports all of {}.".format(listing)
    raise LaunchError("no PyTorch build can use this GPU: {}\n{}\nTo install the CPU build instead: "
                      "set LAUNCH_VARIANT=cpu and run the launcher again.".format(problem, advice), 3)


def query_gpus(smi: str) -> list:
    """The GPUs nvidia-smi reports, [] when there is no working nvidia-smi; LaunchError(3) when
    nvidia-smi runs but this driver is too old to report compute capabilities."""
    try:
        result = subprocess.run([smi] + SMI_QUERY, capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        say("no usable nvidia-smi ({}): no NVIDIA GPU.".format(exc.__class__.__name__))
        return []
    if result.returncode != 0:
        message = (result.stdout + result.stderr).strip().splitlines()
        if "not a valid field" in " ".join(message):  # drivers before 510 cannot report compute_cap
            raise LaunchError("this NVIDIA driver is too old for PyTorch ({}).\nUpdate the NVIDIA driver "
                              "to version {} or newer (https://www.nvidia.com/drivers), or set "
                              "LAUNCH_VARIANT=cpu to install the CPU build.".format(
                                  message[0] if message else "nvidia-smi failed",
                                  version_text(min_driver(CUDA_BUILDS[-1], platform.system()))), 3)
        say("nvidia-smi failed (exit code {}{}): no usable NVIDIA GPU.".format(
            result.returncode, ": " + message[0] if message else ""))
        return []
    try:
        return parse_gpus(result.stdout)
    except ValueError as exc:
        say("could not read nvidia-smi's answer ({}): treating this PC as having no NVIDIA GPU. "
            "Set LAUNCH_VARIANT=cuda and TORCH_CUDA=cu126 or cu130 to choose a CUDA build.".format(exc))
        return []


def choose_build(environ, smi: str, system: str) -> tuple:
    """(build, why) from LAUNCH_VARIANT / TORCH_CUDA and the GPUs nvidia-smi reports."""
    variant = environ.get("LAUNCH_VARIANT", "").strip().lower()
    wanted = environ.get("TORCH_CUDA", "").strip().lower()
    if variant not in ("", "cpu", "cuda"):
        raise LaunchError("LAUNCH_VARIANT must be cpu or cuda, not {!r}.".format(environ["LAUNCH_VARIANT"]), 2)
    if wanted and not re.fullmatch(r"cu\d{3}", wanted):
        raise LaunchError("TORCH_CUDA must name a PyTorch CUDA build such as cu126 or cu130, not {!r}.".format(
            environ["TORCH_CUDA"]), 2)
    if variant == "cpu":
        return "cpu", "LAUNCH_VARIANT=cpu: installing the CPU build of PyTorch."
    if variant == "cuda" and wanted:
        return wanted, "LAUNCH_VARIANT=cuda and TORCH_CUDA={}: installing that build.".format(wanted)
    if system == "Darwin" and not variant:
        return "cpu", "macOS: PyTorch has no CUDA build here; installing the standard build."
    gpus = query_gpus(smi)
    if not gpus:
        if variant == "cuda":
            return CUDA_BUILDS[0].tag, "LAUNCH_VARIANT=cuda, no GPU reported: installing the newest CUDA build ({})." \
                .format(CUDA_BUILDS[0].tag)
        return "cpu", "no NVIDIA GPU found: installing the CPU build of PyTorch."
    if wanted:
        return wanted, "NVIDIA GPU found; TORCH_CUDA={}: installing that build.".format(wanted)
    return pick_build(gpus, system)


def find_smi(given: str | None) -> str:
    return given or shutil.which("nvidia-smi") or "nvidia-smi"


def choose_build_command(argv: list) -> int:
    smi = None
    if argv[:1] == ["--smi"] and len(argv) == 2:
        smi = argv[1]
    elif argv:
        say("usage: launcher.py choose-build [--smi PATH_TO_nvidia-smi]")
        return 2
    try:
        build, why = choose_build(os.environ, find_smi(smi), platform.system())
    except LaunchError as exc:
        if exc.code == 3:
            print("none")
        say(("error: " if exc.code == 2 else "") + str(exc))
        return exc.code
    say(why)
    print(build)
    return 0


# --- torch-index, variant-of, stamp ----------------------------------------------------------------

def variant_of(build: str) -> str:
    if build == "cpu":
        return "cpu"
    if re.fullmatch(r"cu\d{3}", build):
        return "cuda"
    raise LaunchError("not a torch build: {!r} (cpu, cu126, cu130, ...)".format(build), 2)


def torch_index(build: str, system: str, machine: str) -> str:
    """The wheel index torch must come from for this build, '' when PyPI's torch is that build. On a
    machine without an NVIDIA GPU PyPI's torch serves: its Linux CUDA build runs on a CPU too."""
    if variant_of(build) == "cpu":
        return ""
    pypi = PYPI_LINUX_BUILD if system == "Linux" and machine.lower() in ("x86_64", "amd64") else "cpu"
    return "" if build == pypi else TORCH_INDEX + build


def stamp(build: str, paths: list) -> str:
    """'<sha256 of the files, CRLF read as LF> python<version> <build>': pip runs again when it changes."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read().replace(b"\r\n", b"\n")).digest())
    return "{} python{} {}".format(digest.hexdigest(), platform.python_version(), build)


def main(argv: list) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command == "python-ok" and not args:
            return python_ok()
        if command == "torch-pin" and len(args) in (1, 2):
            return torch_pin_command(*args)
        if command == "choose-build":
            return choose_build_command(args)
        if command == "torch-index" and len(args) == 1:
            print(torch_index(args[0], platform.system(), platform.machine()))
            return 0
        if command == "variant-of" and len(args) == 1:
            print(variant_of(args[0]))
            return 0
        if command == "stamp" and len(args) >= 2 and re.fullmatch(r"[A-Za-z0-9._+-]+", args[0]):
            print(stamp(args[0], args[1:]))
            return 0
    except LaunchError as exc:
        say("error: " + str(exc))
        return exc.code
    except OSError as exc:
        say("error: {}: {}".format(getattr(exc, "filename", None) or command, exc.strerror or exc))
        return 1
    say("usage: launcher.py python-ok | torch-pin FILE [BUILD] | choose-build [--smi PATH] | torch-index BUILD"
        " | variant-of BUILD | stamp BUILD FILE...")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
