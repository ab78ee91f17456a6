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
# The venv lives next to this script. pip runs only when the requirement files changed:
# venv/.requirements-stamp holds the sha256 of the files used, the Python version and the
# variant (cpu, or cuda when nvidia-smi works); venv/.requirements-test-stamp the same for
# requirements-test.txt. Delete a stamp (or venv/) to force a reinstall.
#
# Environment:
#   PYTHON=/path/to/python    interpreter that creates the venv (3.10-3.12; default: search)
#   LAUNCH_VARIANT=cpu|cuda   skip GPU detection
#   LAUNCH_DRY_RUN=1          print what would be installed and run, change nothing
#   CHROMIUM_PATH=/path       chromium for the browser tests (test and bench modes; exported when found)
set -euo pipefail

ROOT="$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/venv"
VENV_PY="$VENV/bin/python"
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

python_ok() {
  "$1" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' >/dev/null 2>&1
}

# Candidates are run, not just looked up: a pyenv shim exists even when it cannot run.
find_python() {
  local candidate
  if [[ -n "${PYTHON:-}" ]]; then
    python_ok "$PYTHON" || die "PYTHON=$PYTHON does not run as Python 3.10, 3.11 or 3.12."
    printf '%s\n' "$PYTHON"
    return
  fi
  for candidate in python3.11 python3.10 python3.12 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
  die "Python 3.10, 3.11 or 3.12 is needed (3.11 recommended); none of python3.11, python3.10,
  python3.12, python3, python runs as one of those versions. Install one, for example
    Debian/Ubuntu:  sudo apt-get install python3.11 python3.11-venv
    macOS:          brew install python@3.11
  or point PYTHON at it:  PYTHON=/path/to/python3.11 ./launch.sh"
}

detect_variant() {
  case "${LAUNCH_VARIANT:-}" in
    cpu | cuda) printf '%s\n' "$LAUNCH_VARIANT" ;;
    "")
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo cuda
      else
        echo cpu
      fi
      ;;
    *) die "LAUNCH_VARIANT must be cpu or cuda, not '$LAUNCH_VARIANT'." ;;
  esac
}

# compute_stamp PYTHON VARIANT FILE... -> "<sha256> python<version> <variant>"
compute_stamp() {
  local python="$1"
  shift
  "$python" - "$@" <<'PY'
import hashlib, platform, sys
variant, paths = sys.argv[1], sys.argv[2:]
digest = hashlib.sha256()
for path in paths:
    with open(path, "rb") as f:
        digest.update(hashlib.sha256(f.read().replace(b"\r\n", b"\n")).digest())
print(digest.hexdigest(), "python" + platform.python_version(), variant)
PY
}

stamp_matches() {  # stamp_matches STAMP_FILE STAMP
  [[ -f "$1" && "$(cat "$1")" == "$2" ]]
}

pip_install() {
  "$VENV_PY" -m pip install --disable-pip-version-check "$@"
}

# The install functions run where `set -e` is off (`install || die`): return on failure.
install_main() {
  pip_install -r "$ROOT/requirements.txt" || return
  if [[ "$VARIANT" == cuda ]]; then
    # onnxruntime and onnxruntime-gpu ship the same module: remove both, add the GPU one.
    "$VENV_PY" -m pip uninstall -y onnxruntime onnxruntime-gpu || return
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
  stamp="$(compute_stamp "$STAMP_PY" "$VARIANT" "$@")"
  if stamp_matches "$stamp_file" "$stamp"; then
    say "$name unchanged ($(basename "$stamp_file") matches), skipping install"
  elif [[ "$DRY_RUN" == 1 ]]; then
    say "would install $name ($VARIANT): $*"
    say "new stamp: $stamp"
  else
    say "installing $name ($VARIANT) with pip; the first time takes several minutes"
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

VARIANT="$(detect_variant)"

if [[ -x "$VENV_PY" ]]; then
  "$VENV_PY" -c 'import sys' >/dev/null 2>&1 ||
    die "the venv's Python does not run ($VENV_PY). Delete the folder '$VENV' and run again."
  STAMP_PY="$VENV_PY"
else
  [[ ! -e "$VENV" ]] || die "'$VENV' exists but holds no venv. Delete it and run again."
  STAMP_PY="$(find_python)"
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
