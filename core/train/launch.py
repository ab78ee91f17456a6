"""The command that starts a training run: plain Python, or `accelerate launch` for several processes."""
from __future__ import annotations

import sys

from core.config.launch import LaunchSettings


def launcher_argv(cfg: LaunchSettings) -> list[str]:
    """The part of the argv before `-m core train ...`: the Python interpreter, followed by
    accelerate's launcher and its arguments when the run is distributed."""
    if not cfg.distributed:
        return [sys.executable]
    argv = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config_file.strip():
        argv += ["--config_file", cfg.accelerate_config_file.strip()]
    elif cfg.num_processes > 1:
        argv.append("--multi_gpu")  # a config file names its own distributed type (DeepSpeed, FSDP, ...)
    argv += ["--num_processes", str(cfg.num_processes), "--num_machines", str(cfg.num_machines)]
    if cfg.gpu_ids.strip():
        argv += ["--gpu_ids", cfg.gpu_ids.replace(" ", "")]
    if cfg.num_machines > 1:
        argv += ["--machine_rank", str(cfg.machine_rank), "--main_process_ip", cfg.main_process_ip.strip(),
                 "--main_process_port", str(cfg.main_process_port)]
    mixed_precision = getattr(cfg, "mixed_precision", None)
    if mixed_precision:
        argv += ["--mixed_precision", mixed_precision]
    return argv + ["--dynamo_backend", "no"]
