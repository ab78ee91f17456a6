"""How the GUI starts a training run: the argv (one process, or `accelerate launch`), values with spaces,
quotes and shell characters arriving literally, and a real 2-process run started like the GUI does."""
import json
import sys
import time

import pytest
from trainkit import train_values

from core.config import ConfigError, TrainConfig, validate
from core.jobs.run_folder import RunFolder
from core.jobs.runner import job_command, run_state, start_job
from core.train.launch import launcher_argv

ODD = "my run's \"out\" $HOME `x` ; & | é"


@pytest.fixture(scope="module")
def kit(demo_kit):
    return demo_kit("sd1", 6, 0)


def config(kit, tmp_path, **overrides) -> TrainConfig:
    return validate(TrainConfig, train_values(kit, tmp_path / "out", **overrides), "test")


def test_one_process_runs_python_directly(kit, tmp_path):
    run_dir = tmp_path / ODD
    assert job_command("train", run_dir, config(kit, tmp_path)) == [
        sys.executable, "-m", "core", "train", "--config", str(run_dir / "config.json"), "--run-dir", str(run_dir)]


def test_several_processes_go_through_accelerate_launch(kit, tmp_path):
    cfg = config(kit, tmp_path, num_processes=2, gpu_ids=" 0, 1", mixed_precision="bf16")
    assert launcher_argv(cfg) == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                  "--num_processes", "2", "--num_machines", "1", "--gpu_ids", "0,1",
                                  "--mixed_precision", "bf16", "--dynamo_backend", "no"]


def test_config_file_and_multi_node_arguments(kit, tmp_path):
    config_file = str(tmp_path / ODD / "deepspeed.yaml")
    cfg = config(kit, tmp_path, num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.2",
                 main_process_port=29600, accelerate_config_file=config_file)
    assert launcher_argv(cfg) == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file,
                                  "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
                                  "--main_process_ip", "10.0.0.2", "--main_process_port", "29600",
                                  "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.parametrize("overrides, message", [
    ({"num_machines": 2, "num_processes": 2}, "needs main_process_ip"),
    ({"num_machines": 2, "num_processes": 2, "main_process_ip": "h", "machine_rank": 2}, "must be below"),
    ({"num_machines": 3, "num_processes": 2, "main_process_ip": "h"}, "at least one per machine"),
    ({"gpu_ids": "0;rm -rf /"}, "gpu_ids"),
])
def test_bad_launch_settings_are_refused(kit, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(kit, tmp_path, **overrides)


def wait_done(run_dir, timeout=300.0) -> str:
    end = time.time() + timeout
    while time.time() < end:
        state = run_state(run_dir)
        if state not in ("starting", "running"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} still running")


def test_values_reach_the_job_literally(kit, tmp_path):
    out = tmp_path / ODD
    run_dir = start_job("train", train_values(kit, out, max_train_steps=1, output_name="odd name 'q' $x"))
    assert wait_done(run_dir) == "done", (run_dir / "console.txt").read_text()
    assert json.loads((run_dir / "config.json").read_text())["values"]["output_dir"] == str(out)
    assert (out / "odd name 'q' $x.safetensors").is_file()
    assert json.loads((run_dir / "result.json").read_text())["final_loss"] > 0


def test_two_processes_started_like_the_gui_does(kit, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # CPU processes (gloo); on GPUs one process per GPU
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = start_job("train", train_values(kit, tmp_path / "out", max_train_steps=2, num_processes=2))
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in RunFolder(run_dir).read_status()["command"]
    assert wait_done(run_dir) == "done", (run_dir / "console.txt").read_text()[-3000:]
    assert "processes: 2" in (run_dir / "log.txt").read_text()
    assert (run_dir / "log.rank1.txt").is_file()
