#!/usr/bin/env bash
# One-click launcher for Linux and macOS.
#
#   ./launch.sh [gui args...]          set up ./venv if needed, then start the GUI
#                                      (arguments go to gui.py: --host, --port, --auth, ...)
#   ./launch.sh test [pytest args...]  same set-up plus the test extras (and Debian's
#                                      chromium via apt-get when missing), then pytest tests/
#   ./launch.sh bench [args...]        same set-up as test (the GUI benchmark drives chromium),
#                                      then bench/run.py: every benchmark, one table of ratios
#                                      (--quick, --only NAME, --out bench/latest.md)
#
# The venv lives next to this script. The PyTorch build is chosen from the GPUs and driver that
# nvidia-smi reports (core/launcher.py choose-build: cpu, or the newest CUDA build, e.g. cu130 or
# cu126, that runs every GPU on the installed driver). pip runs only when the requirement files
# or that choice changed: venv/.requirements-stamp holds the sha256 of the files used, the Python
# version and the build; venv/.requirements-test-stamp the same for requirements-test.txt.
# Delete a stamp (or venv/) to force a reinstall.
#
# Environment:
#   PYTHON=/path/to/python    interpreter that creates the venv (a version core/launcher.py
#                             python-ok accepts; default: search)
#   LAUNCH_VARIANT=cpu|cuda   skip GPU detection (cuda: the build detected, or TORCH_CUDA)
#   TORCH_CUDA=cu126          PyTorch CUDA build to install on an NVIDIA machine
#   LAUNCH_DRY_RUN=1          print what would be installed and run, change nothing
#   CHROMIUM_PATH=/path       chromium for the browser tests (test and bench modes; exported when found)
set -euo pipefail

ROOT="$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/venv"
VENV_PY="$VENV/bin/python"
LAUNCHER="$ROOT/core/launcher.py"
DRY_RUN="${LAUNCH_DRY_RUN:-0}"

# Offline first: nothing is fetched from a hub at run time; no analytics or telemetry.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1 DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export GRADIO_ANALYTICS_ENABLED=False
export PYTHONUTF8=1

say() { printf '[launch] %s\n' "$*"; }
die() { printf '[launch] error: %s\n' "$*" >&2; exit 1; }

MODE=run
if [[ "${1:-}" == "test" || "${1:-}" == "bench" ]]; then
  MODE="$1"
  shift
fi

# python_ok PYTHON: run it (a pyenv shim exists even when it cannot run) and ask core/launcher.py
# whether all pinned packages have wheels for it; on refusal the reason is left in WHY.
python_ok() {
  WHY="$("$1" "$LAUNCHER" python-ok 2>&1)" && return 0
  [[ "$WHY" == "[launch] "* ]] || WHY="[launch] $1 is not a usable Python${WHY:+: ${WHY##*$'\n'}}"
  return 1
}

find_python() {
  local candidate reasons=""
  if [[ -n "${PYTHON:-}" ]]; then
    python_ok "$PYTHON" || { printf '%s\n' "$WHY" >&2; die "PYTHON=$PYTHON cannot be used."; }
    printf '%s\n' "$PYTHON"
    return
  fi
  for candidate in python3.11 python3.12 python3.13 python3 python; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if python_ok "$candidate"; then
      command -v "$candidate"
      return
    fi
    reasons+="$WHY"$'\n'
  done
  printf '%s' "$reasons" >&2
  die "no usable Python found (tried python3.11, python3.12, python3.13, python3, python).
  Install Python 3.11, for example
    Debian/Ubuntu:  sudo apt-get install python3.11 python3.11-venv
    macOS:          brew install python@3.11
  or point PYTHON at it:  PYTHON=/path/to/python3.11 ./launch.sh"
}

# choose_build: BUILD (cpu, cu126, cu130, ...) and VARIANT (cpu or cuda) from the GPUs and driver;
# core/launcher.py prints on stderr what it chose and why, or why no build can use the GPU.
choose_build() {
  local rc=0
  BUILD="$("$STAMP_PY" "$LAUNCHER" choose-build)" || rc=$?
  case "$rc" in
    0) ;;
    3) die "no PyTorch build can use this NVIDIA GPU (see above); nothing was installed." ;;
    *) die "could not choose the PyTorch build (see above)." ;;
  esac
  VARIANT="$("$STAMP_PY" "$LAUNCHER" variant-of "$BUILD")" || die "unknown PyTorch build '$BUILD'."
  # PyPI's torch is the right build unless the choice says otherwise (e.g. cu126 for older GPUs).
  TORCH_INDEX="$("$STAMP_PY" "$LAUNCHER" torch-index "$BUILD")" || die "unknown PyTorch build '$BUILD'."
  TORCH_PIN=""
  if [[ -n "$TORCH_INDEX" ]]; then
    TORCH_PIN="$("$STAMP_PY" "$LAUNCHER" torch-pin "$ROOT/requirements.txt" "$BUILD")" ||
      die "requirements.txt must pin torch (torch==VERSION)."
  fi
}

# compute_stamp PYTHON BUILD FILE... -> "<sha256> python<version> <build>"
compute_stamp() {
  local python="$1"
  shift
  "$python" "$LAUNCHER" stamp "$@"
}

stamp_matches() {  # stamp_matches STAMP_FILE STAMP
  [[ -f "$1" && "$(cat "$1")" == "$2" ]]
}

# run COMMAND...: run it, or in a dry run print it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    say "would run:$(printf ' %q' "$@")"
  else
    "$@"
  fi
}

pip_install() {
  run "$VENV_PY" -m pip install --disable-pip-version-check "$@"
}

# The install functions run where `set -e` is off (`install || die`): return on failure.
install_main() {
  if [[ -n "$TORCH_INDEX" ]]; then
    # The chosen build first, from PyTorch's index; requirements.txt's pin then accepts it
    # (torch==2.13.0 matches 2.13.0+cu126).
    pip_install "$TORCH_PIN" --index-url "$TORCH_INDEX" || return
  fi
  if [[ "$VARIANT" != cuda ]] && "$VENV_PY" -m pip show -q onnxruntime-gpu >/dev/null 2>&1; then
    # Back to the CPU: the GPU onnxruntime goes, and with it the module both packages ship.
    run "$VENV_PY" -m pip uninstall -y onnxruntime onnxruntime-gpu || return
  fi
  pip_install -r "$ROOT/requirements.txt" || return
  if [[ "$VARIANT" == cuda ]]; then
    # onnxruntime and onnxruntime-gpu ship the same module: remove both, add the GPU one.
    run "$VENV_PY" -m pip uninstall -y onnxruntime onnxruntime-gpu || return
    pip_install -r "$ROOT/requirements-cuda.txt" || return
  fi
}

install_test() {
  pip_install -r "$ROOT/requirements-test.txt"
}

# ensure NAME STAMP_FILE INSTALL_FUNCTION FILE...: install unless the stamp matches.
ensure() {
  local name="$1" stamp_file="$2" install="$3"
  shift 3
  local stamp
  stamp="$(compute_stamp "$STAMP_PY" "$BUILD" "$@")"
  if stamp_matches "$stamp_file" "$stamp"; then
    say "$name unchanged ($(basename "$stamp_file") matches), skipping install"
  elif [[ "$DRY_RUN" == 1 ]]; then
    say "would install $name ($BUILD): $*"
    "$install"
    say "new stamp: $stamp"
  else
    say "installing $name ($BUILD) with pip; the first time takes several minutes"
    rm -f "$stamp_file"
    "$install" || die "installing $name failed (see pip's message above); fix it and run again."
    printf '%s\n' "$stamp" >"$stamp_file"
  fi
}

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo -n "$@"; fi
}

find_chromium() {
  local candidate
  if [[ -n "${CHROMIUM_PATH:-}" ]]; then
    if [[ -x "$CHROMIUM_PATH" ]]; then
      printf '%s\n' "$CHROMIUM_PATH"
      return 0
    fi
    say "CHROMIUM_PATH=$CHROMIUM_PATH is not an executable file; looking elsewhere" >&2
  fi
  for candidate in /usr/bin/chromium chromium chromium-browser; do
    if command -v "$candidate" >/dev/null 2>&1; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# Browser tests use Debian's chromium (never `playwright install`, which downloads a build).
ensure_chromium() {
  local found
  if ! found="$(find_chromium)"; then
    if ! command -v apt-get >/dev/null 2>&1 ||
      ! { [[ "$(id -u)" == 0 ]] || sudo -n true 2>/dev/null; }; then
      say "no chromium found and apt-get is not usable: browser tests cannot run." \
        "Install chromium or set CHROMIUM_PATH."
      return 0
    fi
    if [[ "$DRY_RUN" == 1 ]]; then
      say "would run: apt-get update && apt-get install -y chromium"
      return 0
    fi
    say "installing Debian's chromium for the browser tests (apt-get)"
    if ! as_root apt-get update || ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium ||
      ! found="$(find_chromium)"; then
      say "chromium could not be installed: browser tests cannot run."
      return 0
    fi
  fi
  export CHROMIUM_PATH="$found"
  say "chromium: $CHROMIUM_PATH"
}

# The launch.bat test (tests/test_launch_wine.py) runs it under Debian's wine; the test itself adds
# wine 10's cmd and a Windows Python (tests/windows/setup.sh: Debian mirror and PyPI only).
WINE_PACKAGES=(wine wine64 gcc-mingw-w64-x86-64-win32 unzip)
ensure_wine() {
  local tool missing=()
  [[ "$(uname -s)" == Linux ]] || return 0
  for tool in wine wineserver x86_64-w64-mingw32-gcc unzip; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  if ! command -v apt-get >/dev/null 2>&1 ||
    ! { [[ "$(id -u)" == 0 ]] || sudo -n true 2>/dev/null; }; then
    say "not installed: ${missing[*]}; apt-get is not usable: the launch.bat test under wine cannot run." \
      "Install the Debian packages ${WINE_PACKAGES[*]}."
    return 0
  fi
  if [[ "$DRY_RUN" == 1 ]]; then
    say "would run: apt-get update && apt-get install -y --no-install-recommends ${WINE_PACKAGES[*]}"
    return 0
  fi
  say "installing Debian's wine for the launch.bat test (apt-get)"
  if ! as_root apt-get update || ! as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${WINE_PACKAGES[@]}"; then
    say "wine could not be installed: the launch.bat test cannot run."
  fi
}

if [[ -x "$VENV_PY" ]]; then
  "$VENV_PY" -c 'import sys' >/dev/null 2>&1 ||
    die "the venv's Python does not run ($VENV_PY). Delete the folder '$VENV' and run again."
  STAMP_PY="$VENV_PY"
  choose_build
else
  [[ ! -e "$VENV" ]] || die "'$VENV' exists but holds no venv. Delete it and run again."
  STAMP_PY="$(find_python)"
  choose_build  # before the venv exists: a refusal leaves nothing behind
  if [[ "$DRY_RUN" == 1 ]]; then
    say "would create venv with $STAMP_PY: $VENV"
  else
    say "creating venv with $STAMP_PY ($("$STAMP_PY" -c 'import platform; print(platform.python_version())'))"
    "$STAMP_PY" -m venv "$VENV" ||
      die "could not create the venv. On Debian/Ubuntu install the venv module (e.g. sudo apt-get install python3.11-venv), delete '$VENV' and run again."
    STAMP_PY="$VENV_PY"
  fi
fi

if [[ "$VARIANT" == cuda ]]; then
  ensure requirements "$VENV/.requirements-stamp" install_main \
    "$ROOT/requirements.txt" "$ROOT/requirements-cuda.txt"
else
  ensure requirements "$VENV/.requirements-stamp" install_main "$ROOT/requirements.txt"
fi

cd "$ROOT"
if [[ "$MODE" == test || "$MODE" == bench ]]; then
  ensure "test requirements" "$VENV/.requirements-test-stamp" install_test \
    "$ROOT/requirements-test.txt"
  ensure_chromium
  if [[ "$MODE" == test ]]; then
    ensure_wine
  fi
fi
if [[ "$MODE" == test ]]; then
  COMMAND=("$VENV_PY" -m pytest tests)
elif [[ "$MODE" == bench ]]; then
  COMMAND=("$VENV_PY" bench/run.py)
else
  COMMAND=("$VENV_PY" gui.py)
fi

if [[ "$DRY_RUN" == 1 ]]; then
  say "would run:$(printf ' %q' "${COMMAND[@]}" ${1+"$@"})"
  exit 0
fi
exec "${COMMAND[@]}" ${1+"$@"}
