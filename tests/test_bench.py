"""bench/run.py: the table it prints, and a quick smoke run of one cheap benchmark (no timings asserted)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import Row, format_table  # noqa: E402
from bench.run import discover  # noqa: E402


def test_table_has_one_line_per_row_with_its_verdict_and_lists_crashed_benchmarks():
    rows = [Row("cache job vs bare VAE", 0.93456, ">=", 0.9, "job / VAE alone", "10.1 vs 10.8 images/s"),
            Row("log | shown", 1.7, "<=", 1.5, "worst / interval", "")]
    table = format_table(rows, {"bench_gui.py": "exited with code 1"}, machine="2 cores; no GPU")
    lines = table.splitlines()
    assert lines[0] == "Machine: 2 cores; no GPU"
    assert lines[2].startswith("| benchmark | ratio | target | result |")
    assert lines[4] == "| cache job vs bare VAE | 0.935 | >= 0.9 | pass | job / VAE alone | 10.1 vs 10.8 images/s |"
    assert lines[5] == "| log \\| shown | 1.700 | <= 1.5 | FAIL | worst / interval |  |"  # a | in a cell is escaped
    assert lines[6].startswith("| bench_gui.py | - | - | ERROR | exited with code 1")
    assert [Row(**row.to_json()) for row in rows] == rows  # how the rows travel from a benchmark's process


def test_row_checks_its_comparison():
    assert Row("a", 1.0, "<=", 1.0, "").passed and Row("a", 1.0, ">=", 1.0, "").passed
    assert not Row("a", 1.01, "<=", 1.0, "").passed
    with pytest.raises(ValueError):
        Row("a", 1.0, "<", 1.0, "")


def test_every_benchmark_is_discovered_and_exposes_its_measure():
    names = discover()
    assert {"train", "cache", "tagger", "memory", "gui", "log"} <= set(names)
    for name in names:
        source = (REPO / "bench" / f"bench_{name}.py").read_text(encoding="utf-8")
        tree = ast.parse(source)
        functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        assigned = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets}
        assert {"parse_args", "measure"} <= set(functions) and "QUICK" in assigned, name  # in the table
        assert [arg.arg for arg in functions["measure"].args.args] == ["args"], name
        assert 'if __name__ == "__main__":' in source, name  # and runnable alone


def test_quick_run_of_one_benchmark_prints_the_table_and_writes_it(tmp_path):
    out = tmp_path / "latest.md"
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", "--only", "log", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Machine: ") and "GPU" in result.stdout.splitlines()[0]
    assert "== bench_log.py (quick) ==" in result.stdout
    assert "bench_cache.py" not in result.stdout  # --only ran that one alone
    table = out.read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| log line to JobPanel.poll |")]
    assert len(rows) == 1 and rows[0] in result.stdout
    assert "`bench/run.py --quick`" in table


def test_unknown_benchmark_name_is_refused_with_the_known_ones():
    result = subprocess.run([sys.executable, "bench/run.py", "--only", "nope"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "no benchmark named nope" in result.stderr and "cache" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="launch.sh needs bash")
def test_launch_bench_mode_sets_up_like_test_then_runs_bench_run_py(tmp_path):
    from test_launch import make_copy

    tmp_path = make_copy(tmp_path / "copy")  # a copy: a dry run without a venv changes nothing
    env = {k: v for k, v in os.environ.items() if k not in ("LAUNCH_VARIANT", "PYTHON", "CHROMIUM_PATH")}
    result = subprocess.run(["bash", str(tmp_path / "launch.sh"), "bench", "--only", "log", "--quick"],
                            env={**env, "LAUNCH_DRY_RUN": "1", "LAUNCH_VARIANT": "cpu", "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would install test requirements (cpu)" in result.stdout  # playwright, for bench_gui.py's browser part
    command = [line for line in result.stdout.splitlines() if line.startswith("[launch] would run:")]
    assert command[-1].endswith("bench/run.py --only log --quick"), result.stdout  # after the pip commands
