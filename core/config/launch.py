"""How a training run is launched: one process, or several through `accelerate launch`."""
from __future__ import annotations

from pydantic import model_validator

from core.config.conditions import above
from core.config.schema import JobConfig, param

MULTI_NODE = above("num_machines", 1)


class LaunchSettings(JobConfig):
    """Multi-GPU and multi-node settings, turned into `accelerate launch` arguments by the GUI
    (core/train/launch.py); from a terminal, run the command the GUI shows."""
    num_processes: int = param(
        1, "Training processes in all, one per GPU (above 1 the run goes through `accelerate launch`).",
        label="GPU processes", group="Multi-GPU", ge=1, le=1024)
    gpu_ids: str = param("", "GPUs to use on this machine, e.g. 0,1 (empty: all).", label="GPU IDs",
                         group="Multi-GPU", pattern=r"^\s*(all|\d+(\s*,\s*\d+)*)?\s*$")
    accelerate_config_file: str = param(
        "", "An accelerate config file (made with `accelerate config`) for DeepSpeed, FSDP or multi-node "
        "setups; the settings here override it.", label="Accelerate config", widget="file", group="Multi-GPU",
        advanced=True)
    num_machines: int = param(1, "Machines taking part (multi-node).", label="Machines", group="Multi-GPU",
                              advanced=True, ge=1)
    machine_rank: int = param(0, "This machine's rank (0 on the main machine).", label="Machine rank",
                              group="Multi-GPU", advanced=True, applies=MULTI_NODE, ge=0)
    main_process_ip: str = param("", "Address (IP) of the main machine (multi-node).", label="Main machine address",
                                 group="Multi-GPU", advanced=True, applies=MULTI_NODE)
    main_process_port: int = param(29500, "Port of the main machine (multi-node).", label="Main machine port",
                                   group="Multi-GPU", advanced=True, applies=MULTI_NODE, ge=1, le=65535)

    @model_validator(mode="after")
    def _consistent_launch(self):
        if self.num_machines > 1 and not self.main_process_ip.strip():
            raise ValueError("num_machines above 1 needs main_process_ip (the main machine's address)")
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} must be below num_machines {self.num_machines}")
        if self.num_processes < self.num_machines:
            raise ValueError("num_processes counts the processes of all machines: at least one per machine")
        return self

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1 or self.num_machines > 1 or bool(self.accelerate_config_file.strip())
