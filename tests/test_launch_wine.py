"""launch.bat, run for real under wine: a Windows CPython, a real venv and pip, offline stand-in wheels.

The scenarios (tests/windows/run_scenarios.py: odd paths, no/bad Python, a pyenv-win shim, CPU, new
and old GPUs, an old driver, a venv Python that cannot start, stamps, arguments, exit codes, the
pause) run in the background of the suite from the session's start (tests/conftest.py); this test,
collected last, waits for them. Without wine it is skipped with the reason, except in CI (CI=true),
where it fails: `./launch.sh test` installs wine with apt-get when it can.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "windows"))
import wine_background  # noqa: E402


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def cannot_run(reason: str):
    if in_ci():
        pytest.fail(f"CI must run the launch.bat scenarios under wine, but: {reason}")
    pytest.skip(reason)


@pytest.mark.timeout(wine_background.WAIT_S + 60)  # its own limit, with a clearer message, comes first
def test_launch_bat_scenarios_under_wine():
    if not sys.platform.startswith("linux"):
        cannot_run("the launch.bat scenarios run under wine on Linux only")
    results = wine_background.results()
    if "error" in results:
        pytest.fail(results["error"] + "\n" + results.get("log", ""))
    if "skipped" in results:
        cannot_run("cannot run launch.bat under wine here: " + results["skipped"])
    scenarios = results["scenarios"]
    failed = [s for s in scenarios if not s["ok"]]
    report = "\n".join(("PASS " if s["ok"] else "FAIL ") + f"{s['name']} ({s['seconds']} s)" for s in scenarios)
    details = "\n\n".join(f"--- {s['name']}: {'; '.join(s['problems'])}\n{s['log'][-2500:]}" for s in failed)
    assert len(scenarios) >= 20 and not failed, f"{report}\n\n{details}"
