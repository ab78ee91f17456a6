"""What every benchmark shares: a result row, the table of rows, and the machine it ran on."""
from __future__ import annotations

import os
import platform
import socket
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One measured ratio and its target: `ratio <op> limit` passes (op is ">=" or "<=")."""
    name: str
    ratio: float
    op: str
    limit: float
    meaning: str
    measured: str = ""

    def __post_init__(self):
        if self.op not in (">=", "<="):
            raise ValueError(f"op must be '>=' or '<=', not {self.op!r}")

    @property
    def target(self) -> str:
        return f"{self.op} {self.limit:g}"

    @property
    def passed(self) -> bool:
        return self.ratio >= self.limit if self.op == ">=" else self.ratio <= self.limit

    def to_json(self) -> dict:
        return asdict(self)


def print_rows(rows: list[Row]) -> None:
    """How a benchmark run alone ends: its rows, one line each."""
    for row in rows:
        print(f"{row.name}: ratio {row.ratio:.3f} (target {row.target}, {'pass' if row.passed else 'FAIL'}) "
              f"- {row.meaning}; {row.measured}")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_table(rows: list[Row], failures: dict[str, str] | None = None, machine: str = "") -> str:
    """A markdown table of the rows (benchmarks that crashed listed after it), under the machine line."""
    lines = [f"Machine: {machine}", ""] if machine else []
    lines += ["| benchmark | ratio | target | result | what the ratio means | measured |",
              "|---|---:|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {_cell(row.name)} | {row.ratio:.3f} | {row.target} | {'pass' if row.passed else 'FAIL'} "
                     f"| {_cell(row.meaning)} | {_cell(row.measured)} |")
    for name, reason in (failures or {}).items():
        lines.append(f"| {_cell(name)} | - | - | ERROR | {_cell(reason)} | |")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """CPU model and cores, RAM, GPU (or none), OS and the versions that the numbers depend on."""
    import psutil
    import torch

    cores = psutil.cpu_count(logical=False)
    threads = os.cpu_count()
    cpu = f"{cpu_model()}, {threads} logical cores" + (f" ({cores} physical)" if cores and cores != threads else "")
    ram = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    else:
        gpu = "no GPU"
    versions = [f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    for package in ("onnxruntime", "gradio"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
        except Exception:  # noqa: BLE001 - a missing package only shortens the line
            pass
    return f"{cpu}; {ram}; {gpu}; {platform.system()} {platform.release()}; " + ", ".join(versions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(**extra: str) -> dict[str, str]:
    """Environment for processes a benchmark starts: offline, no analytics, unbuffered output."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1", **extra}


from core.estimate.measured import current_rss, peak_rss, reset_peak_rss  # noqa: E402,F401 (one implementation)


@contextmanager
def studio_home(folder: Path):
    """Runs, presets and caption backups go to `folder` meanwhile (STUDIO_HOME), never the user's."""
    before = os.environ.get("STUDIO_HOME")
    os.environ["STUDIO_HOME"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("STUDIO_HOME", None)
        else:
            os.environ["STUDIO_HOME"] = before
