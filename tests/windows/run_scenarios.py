"""launch.bat under wine: a real Windows CPython 3.11, a real venv and real pip, offline.

    python tests/windows/run_scenarios.py RESULTS.json WORK_DIR [--only NAME_PART]

(LAUNCH_BAT_UNDER_TEST=FILE runs another launch.bat, e.g. an old one, through the same scenarios.)

Copies of the project (launch.bat, core/launcher.py, stand-in requirement files, a stub gui.py)
are made under WORK_DIR in folders whose names hold spaces, ( ) & ^ % and non-ASCII letters, and
`wine cmd /c launch.bat ...` runs through the scenarios below. pip installs stand-in wheels
(make_fake_wheels.py) from a local folder (PIP_NO_INDEX); the fake pytest and gui.py print their
arguments. A fake nvidia-smi.exe (nvidia-smi.c) answers the GPU query from FAKE_SMI_GPUS.

Wine, Windows' cmd and Python come from setup.sh, run once into SD_STUDIO_WINE (default
/tmp/sd-studio-wine-UID). RESULTS.json gets {"skipped": reason} when this machine cannot run them,
else {"scenarios": [{name, ok, problems, rc, log, seconds}], "seconds": total}. The wine server
of the private prefix is stopped at the end: nothing is left running.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from make_fake_wheels import make_wheels  # noqa: E402

SETUP_VERSION = "2"
RUN_TIMEOUT_S = 240
PY = r"C:\Python311\python.exe"
PY_DIRS = r"C:\Python311;C:\Python311\Scripts"
PAUSE = "Press any key"
STOPPING = threading.Event()

REQUIREMENTS = 'torch==2.13.0 ; sys_platform != "darwin"  # the launcher picks the build\nonnxruntime==1.32.0\n'
REQUIREMENTS_CUDA = "xformers==0.0.35\nonnxruntime-gpu==1.31.1\n"
REQUIREMENTS_TEST = "pytest==9.2.0\n"
STUB_GUI = (
    "import os, sys\n"
    "print('[fake gui] argv=%r cwd=%s' % (sys.argv[1:], os.getcwd()))\n"
    "sys.exit(int(os.environ.get('FAKE_GUI_RC', '0')))\n"
)

NEW_GPU = "NVIDIA GeForce RTX 4090, 8.9, 580.65"
OLD_GPU = "NVIDIA GeForce GTX 1080, 6.1, 580.65"
OLD_DRIVER = "NVIDIA GeForce RTX 3060, 8.6, 470.82"


def wine_home() -> Path:
    return Path(os.environ.get("SD_STUDIO_WINE") or f"/tmp/sd-studio-wine-{os.getuid()}")


def missing_tools() -> list:
    return [tool for tool in ("wine", "wineserver", "x86_64-w64-mingw32-gcc", "unzip")
            if shutil.which(tool) is None]


def winpath(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


class Runner:
    def __init__(self, work: Path, wine_home: Path):
        self.work = work
        self.wine_home = wine_home
        self.bin = wine_home / "bin"
        self.logs = work / "logs"
        self.results = []
        self.lock = threading.Lock()
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
            "WINEPREFIX": str(wine_home / "prefix"),
            "WINEDEBUG": "-all",
            "WINEDLLOVERRIDES": "cmd.exe,where.exe,fc.exe,findstr.exe=n;winemenubuilder.exe=d",
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": winpath(work / "wheels"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_CACHE_DIR": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def project(self, relative: str) -> Path:
        """A fresh copy of what launch.bat needs, at WORK/relative."""
        folder = self.work / relative
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "core").mkdir(parents=True)
        bat = Path(os.environ.get("LAUNCH_BAT_UNDER_TEST") or REPO / "launch.bat").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        (folder / "launch.bat").write_bytes(bat)
        shutil.copy2(REPO / "core" / "launcher.py", folder / "core" / "launcher.py")
        (folder / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
        (folder / "requirements-cuda.txt").write_text(REQUIREMENTS_CUDA, encoding="utf-8")
        (folder / "requirements-test.txt").write_text(REQUIREMENTS_TEST, encoding="utf-8")
        (folder / "gui.py").write_text(STUB_GUI, encoding="utf-8")
        return folder

    def launch(self, folder: Path, *args, script="launch.bat", **env) -> tuple:
        """`wine cmd /c launch.bat ARGS` in FOLDER with only the environment given: (rc, output)."""
        if STOPPING.is_set():  # the run is being ended: start no more wine processes
            raise SystemExit(143)
        full_env = dict(self.base_env)
        full_env.update(env)
        process = subprocess.Popen(
            ["wine", "cmd", "/c", script, *args], cwd=folder, env=full_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # output must be a pipe
        try:
            out, _ = process.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            out += b"\n[scenario] timed out\n"
        return process.returncode, out.decode("utf-8", "replace").replace("\r", "")

    def check(self, name, folder, args=(), env=None, rc=0, want=(), absent=(), before=None, after=None,
              script="launch.bat"):
        """Run one scenario and record whether its exit code and output are as expected."""
        started = time.monotonic()
        if before:
            before()
        code, out = self.launch(folder, *args, script=script, **(env or {}))
        problems = []
        if code != rc:
            problems.append(f"exit code {code}, expected {rc}")
        problems += [f"missing: {text!r}" for text in want if text not in out]
        problems += [f"unexpected: {text!r}" for text in absent if text in out]
        problems += [f"trailing space: {line!r}" for line in out.splitlines()
                     if line.startswith("[launch]") and line.endswith(" ")]
        if after:
            problems += after()
        with self.lock:
            self.results.append({"name": name, "ok": not problems, "problems": problems, "rc": code,
                                 "log": out[-6000:], "seconds": round(time.monotonic() - started, 1)})
        print(("PASS " if not problems else "FAIL ") + name, flush=True)

    # --- the scenarios, in groups that share a project copy (groups run in parallel) ---------------

    def group_no_venv(self):
        """Failures before any venv exists: nothing may be created."""
        folder = self.project("h/nopy")
        no_venv = lambda: [] if not (folder / "venv").exists() else ["a venv was created"]  # noqa: E731
        self.check("no Python: clear error and what to install, pause", folder, rc=1,
                   want=["no usable Python found", "python.org", PAUSE], after=no_venv)
        self.check("started from a console (no cmd /c): no pause on failure", folder, rc=1,
                   env={"CMDCMDLINE": r"C:\windows\system32\cmd.exe"}, want=["no usable Python found"],
                   absent=[PAUSE])
        self.check("bad PYTHON (test mode: no pause)", folder, ["test"], env={"PYTHON": r"C:\nope\python.exe"}, rc=1,
                   want=[r'PYTHON="C:\nope\python.exe" cannot be used', "does not run"], absent=[PAUSE])
        self.check("bad LAUNCH_VARIANT", folder, env={"PYTHON": PY, "LAUNCH_VARIANT": "gpu"}, rc=1,
                   want=["LAUNCH_VARIANT must be cpu or cuda", PAUSE], after=no_venv)
        smi = {"PYTHON": PY, "WINEPATH": winpath(self.bin)}
        self.check("old driver: plain-words refusal, nothing installed", folder,
                   env={**smi, "FAKE_SMI_GPUS": OLD_DRIVER}, rc=1,
                   want=["driver 470.82 is too old", "Update the NVIDIA driver", "LAUNCH_VARIANT=cpu",
                         "nothing was installed", PAUSE], absent=["installing"], after=no_venv)
        self.check("driver before 510 (no compute_cap field): refusal", folder,
                   env={**smi, "FAKE_SMI_OLD": "1"}, rc=1,
                   want=["too old for PyTorch", "nothing was installed"], after=no_venv)
        (folder / "venv").mkdir()
        self.check("venv folder without a venv: named error", folder, env={"PYTHON": PY}, rc=1,
                   want=["exists but holds no venv"])
        (folder / "core" / "launcher.py").unlink()
        self.check("core\\launcher.py missing: files incomplete", folder, env={"PYTHON": PY}, rc=1,
                   want=['core\\launcher.py" is missing', PAUSE])

    def group_weird_path(self):
        folder = self.project("paths/My Files (x86) & Co ^caret/Übung 日本")
        # wine sets LOCALAPPDATA itself (C:\users\NAME\AppData\Local): Chrome installed per user goes there
        chrome_exe = "AppData/Local/Google/Chrome/Application/chrome.exe"
        users = self.wine_home / "prefix" / "drive_c" / "users"

        def user_chrome():
            for home in users.iterdir():
                if (home / "AppData" / "Local").is_dir():
                    (home / chrome_exe).parent.mkdir(parents=True, exist_ok=True)
                    (home / chrome_exe).write_bytes(b"MZ")

        def no_user_chrome():
            for home in users.iterdir():
                if (home / chrome_exe).exists():
                    shutil.rmtree(home / "AppData" / "Local" / "Google")
            return []
        py_path = {"WINEPATH": PY_DIRS}
        self.check("odd path, first run: python on PATH, CPU, GUI args passed, no pause", folder,
                   ["--port", "7861", "--auth", "a b:c"], env=py_path,
                   want=["creating venv with python", "no NVIDIA GPU found", "installing requirements (cpu)",
                         "[fake gui] argv=['--port', '7861', '--auth', 'a b:c']", "Übung 日本"],
                   absent=[PAUSE, "error"])
        self.check("second run: stamp matches, pip skipped", folder, env=py_path,
                   want=["requirements unchanged", "[fake gui]"], absent=["installing requirements", PAUSE])

        def change():
            with open(folder / "requirements.txt", "a", encoding="utf-8") as f:
                f.write("# changed\n")
        self.check("requirements changed: reinstall", folder, before=change,
                   want=["installing requirements (cpu)", "[fake gui]"])
        self.check("test mode: test extras, pytest args, per-user Chrome", folder, ["test", "-k", "x y", "-q"],
                   before=user_chrome, after=no_user_chrome,
                   want=["installing test requirements", "[fake pytest] args=['tests', '-k', 'x y', '-q']",
                         r'[launch] chromium: "C:\users', r'AppData\Local\Google\Chrome\Application\chrome.exe"'],
                   absent=[PAUSE])
        self.check("test mode: pytest's exit code, no pause", folder, ["test"], env={"FAKE_PYTEST_RC": "5"}, rc=5,
                   want=["test requirements unchanged", "[fake pytest]"], absent=[PAUSE])
        self.check("GUI exits 3: exit code 1, named error, pause", folder, env={"FAKE_GUI_RC": "3"}, rc=1,
                   want=["the GUI stopped with exit code 3", PAUSE])

    def group_gpus(self):
        folder = self.project("paths/GPU & (cuda) ^ Ärger")
        smi = {"WINEPATH": winpath(self.bin), "PYTHON": PY}
        self.check("new GPU (RTX 4090, 8.9, driver 580): cu130, torch pin without marker", folder,
                   env={**smi, "FAKE_SMI_GPUS": NEW_GPU},
                   want=["CUDA 13.0 build (cu130)", "installing requirements (cu130)", "torch-2.13.0+cu130",
                         "Skipping onnxruntime-gpu as it is not installed", "[fake gui]"])
        self.check("old GPU (GTX 1080, 6.1) in the same venv: the cu126 build replaces the cu130 one", folder,
                   env={**smi, "FAKE_SMI_GPUS": OLD_GPU},
                   want=["CUDA 12.6 build (cu126)", "installing requirements (cu126)", "torch-2.13.0+cu126",
                         "[fake gui]"])
        self.check("nvidia-smi fails: CPU build; the GPU onnxruntime goes", folder,
                   env={**smi, "FAKE_SMI_RC": "9"},
                   want=["nvidia-smi failed", "installing requirements (cpu)",
                         "Successfully uninstalled onnxruntime-gpu", "Successfully installed onnxruntime-1.32.0",
                         "[fake gui]"])
        self.check("LAUNCH_VARIANT=CUDA (any case) with TORCH_CUDA=cu126", folder,
                   env={"LAUNCH_VARIANT": "CUDA", "TORCH_CUDA": "cu126"},
                   want=["installing requirements (cu126)", "[fake gui]"])
        self.check("LAUNCH_VARIANT=Cpu with a GPU present", folder,
                   env={**smi, "FAKE_SMI_GPUS": NEW_GPU, "LAUNCH_VARIANT": "Cpu"},
                   want=["installing requirements (cpu)", "[fake gui]"])

    def group_percent(self):
        folder = self.project("paths/100% done")
        self.check("project path with %", folder, env={"PYTHON": PY}, want=["creating venv", "[fake gui]"])
        # (started by a path with & or ( ), wine's cmd /c splits it: this one has only a space and a %)
        self.check("project path with %, started from another folder", folder.parent,
                   script=winpath(folder / "launch.bat"), want=["requirements unchanged", "[fake gui]"],
                   absent=["installing requirements"])
        # A UNC path (launch.bat refuses it in words) is not run: wine's cmd cannot start a script by one.

    def group_quoted(self):
        folder = self.project("h/quoted python")
        self.check("PYTHON given with quotes: not doubled", folder, env={"PYTHON": f'"{PY}"'},
                   want=[f'creating venv with "{PY}"', "[fake gui]"], absent=['""'])
        dll_missing = self.bin / "dllmissing.exe"

        def break_venv():
            shutil.copy2(dll_missing, folder / "venv" / "Scripts" / "python.exe")
        self.check("venv Python cannot start (0xC0000135): named error, pause", folder, before=break_venv, rc=1,
                   want=["the venv's Python does not run", "Delete", PAUSE], absent=["[fake gui]"])

    def group_pyenv(self):
        folder = self.project("h/pyenv-win")
        shims = self.work / "pyenv shims"
        shims.mkdir(exist_ok=True)
        (shims / "python.bat").write_bytes(b'@echo off\r\n"C:\\Python311\\python.exe" %*\r\n')
        self.check("python on PATH is a .bat shim (pyenv-win): run with call", folder,
                   env={"WINEPATH": winpath(shims)},
                   want=["creating venv with python", "installing requirements (cpu)", "[fake gui]"])
        self.check("PYTHON is a .bat shim", self.project("h/pyenv-win-2"),
                   env={"PYTHON": str(winpath(shims / "python.bat"))}, want=["creating venv", "[fake gui]"])

    def run(self, only: str | None):
        make_wheels(str(self.work / "wheels"))
        # two lanes of about the same length (each group in turn; the groups share nothing)
        lanes = [[self.group_weird_path, self.group_no_venv, self.group_percent],
                 [self.group_gpus, self.group_quoted, self.group_pyenv]]
        if only:
            lanes = [[g for g in lane if only in g.__name__] for lane in lanes]
        threads = [threading.Thread(target=lambda lane=lane: [self.safe(g) for g in lane], daemon=True)
                   for lane in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def safe(self, group):
        try:
            group()
        except SystemExit:
            return
        except Exception as exc:  # a broken group is a failed scenario, not a crash of the run
            with self.lock:
                self.results.append({"name": group.__name__, "ok": False, "problems": [repr(exc)], "rc": None,
                                     "log": "", "seconds": 0})


def stop_wineserver(wine_home: Path):
    if shutil.which("wineserver"):
        subprocess.run(["wineserver", "-k"], env={**os.environ, "WINEPREFIX": str(wine_home / "prefix")},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)


def ensure_setup(wine_home: Path) -> str | None:
    """None when the wine prefix is ready, else why it cannot be made."""
    ready = wine_home / "ready"
    if ready.exists() and ready.read_text().strip() == SETUP_VERSION:
        return None
    print(f"[wine] setting up {wine_home} (once; 1-2 minutes)", flush=True)
    result = subprocess.run(["bash", str(HERE / "setup.sh"), str(wine_home)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    if result.returncode != 0:
        return "tests/windows/setup.sh failed: " + result.stdout.decode("utf-8", "replace")[-2000:]
    return None


def on_sigterm(*_):
    STOPPING.set()
    sys.exit(143)


def main(argv) -> int:
    results_path, work = Path(argv[0]), Path(argv[1])
    only = argv[3] if len(argv) > 3 and argv[2] == "--only" else None
    started = time.monotonic()
    home = wine_home()
    result = {}
    if not sys.platform.startswith("linux"):
        result["skipped"] = "the launch.bat test runs under wine on Linux only"
    elif missing_tools():
        result["skipped"] = ("not installed: " + ", ".join(missing_tools()) +
                             " (./launch.sh test installs wine, wine64, gcc-mingw-w64-x86-64-win32 and unzip "
                             "with apt-get when it can)")
    else:
        work.mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, on_sigterm)  # so that the wine server is stopped
        with open(home.parent / (home.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time uses (or builds) the prefix
            try:
                why = ensure_setup(home)
                if why:
                    result["skipped"] = why
                else:
                    runner = Runner(work, home)
                    runner.run(only)
                    result["scenarios"] = runner.results
            finally:
                stop_wineserver(home)
    result["seconds"] = round(time.monotonic() - started, 1)
    tmp = results_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(results_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
