"""A fast start: building the GUI imports nothing heavy, and the checks that need heavy imports still run.

The first page waits for everything imported before it: torch alone takes seconds. Listing presets
checks them field by field only (validate_partial); the checks across fields, such as optimizer_args
against the optimizer's signature (which imports torch, bitsandbytes, transformers), run with the full
config: Check settings, Start, the command line.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, TrainConfig, validate, validate_partial
from core.config.presets import user_dir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_gui import START_TARGET_RATIO, START_TARGET_S, Start, start_rows  # noqa: E402

HEAVY = ("torch", "diffusers", "transformers", "onnxruntime", "bitsandbytes", "accelerate", "safetensors.torch",
         "peft")
# Run in a fresh interpreter: records who first imported each heavy module, builds the app, prints
# {module: the importing frames of this project, innermost first} for those that got imported.
BUILD_AND_REPORT = """
import importlib.abc, json, sys, traceback
HEAVY, REPO = json.loads(sys.argv[1]), sys.argv[2]
first = {}

class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        for heavy in HEAVY:
            if (name == heavy or name.startswith(heavy + ".")) and heavy not in first:
                frames = [f for f in traceback.extract_stack() if f.filename.startswith(REPO)
                          and "/site-packages/" not in f.filename]
                first[heavy] = [f"{f.filename[len(REPO) + 1:]}:{f.lineno} {f.line}" for f in reversed(frames)]
        return None

sys.meta_path.insert(0, Recorder())
from tabs.app import build_app
build_app()
print(json.dumps({m: first.get(m, ["(importer not recorded)"]) for m in HEAVY if m in sys.modules}))
"""


def write_user_preset(values: dict) -> None:
    folder = user_dir() / "train"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.json").write_text(json.dumps({"job": "train", "name": "mine", "values": values}),
                                      encoding="utf-8")


def test_building_the_app_imports_nothing_heavy():
    write_user_preset({"optimizer_type": "AdamW8bit", "optimizer_args": ["weight_decay=0.01"]})  # listed at build
    result = subprocess.run([sys.executable, "-c", BUILD_AND_REPORT, json.dumps(HEAVY), str(REPO)], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert not imported, "imported while building the app (each with its first importer, innermost first):\n" + \
        "\n".join(f"{module}:\n    " + "\n    ".join(frames) for module, frames in imported.items())


def test_partial_checks_leave_out_checks_across_fields_but_not_the_fields_own():
    validate_partial(TrainConfig, {"optimizer_args": ["no_such_arg=1"], "min_timestep": 900, "max_timestep": 10},
                     "preset")  # across fields: waits for the full config
    with pytest.raises(ConfigError) as err:
        validate_partial(TrainConfig, {"learning_rate": -1, "train_data_dir": [""], "optimizer_args": 5}, "preset")
    message = str(err.value)
    assert "preset: field 'learning_rate': Input should be greater than 0" in message  # bounds
    assert "field 'train_data_dir': give at least one folder" in message  # a field validator
    assert "field 'optimizer_args'" in message  # types


def test_the_full_check_still_refuses_optimizer_args_the_optimizer_does_not_take(tmp_path):
    values = {"pretrained_model_name_or_path": "model", "train_data_dir": [str(tmp_path)],
              "output_dir": str(tmp_path / "out"), "optimizer_type": "AdamW", "optimizer_args": ["no_such_arg=1"]}
    with pytest.raises(ConfigError, match="optimizer_args no_such_arg not accepted by AdamW; it accepts: betas"):
        validate(TrainConfig, values, "settings")
    assert validate(TrainConfig, {**values, "optimizer_args": ["weight_decay=0.01"]}, "settings").optimizer_args


def test_gui_start_rows_hold_the_seconds_and_the_ratio_to_the_bare_app():
    studio, bare = Start(page_s=2.5, usable_s=4.0, render_s=1.4), Start(page_s=2.2, usable_s=3.2, render_s=0.9)
    seconds, ratio = start_rows(studio, bare, repeats=3)
    assert (seconds.ratio, seconds.limit, seconds.passed) == (4.0, START_TARGET_S, True)
    assert (ratio.ratio, ratio.limit, ratio.passed) == (1.25, START_TARGET_RATIO, True)
    assert "studio usable 4.00 s (GET / 2.50 s, then rendered in 1.40 s)" in ratio.measured
    no_browser = start_rows(Start(6.0, 6.0), Start(2.0, 2.0), repeats=1)
    assert not no_browser[0].passed and no_browser[1].ratio == 3.0
    assert "no browser" in no_browser[0].meaning and "GET / 6.00 s" in no_browser[0].measured


def test_the_first_page_loads_alone_and_each_other_tab_when_first_opened():
    """The page-load event updates the workspace bar, the first tab and the side panel only (an update of a tab not
    shown yet is what cost the browser seconds); each other tab shows its state on its first select of the page."""
    import gradio as gr

    from tabs.app import build_app
    from tabs.page_load import home_tab

    app = build_app()
    by_elem_id = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    tabs = by_elem_id["tab-dataset"].parent
    assert tabs.children[0] is by_elem_id["tab-dataset"]
    # (gradio's own gr.render events aside: the file pickers list their folder when the page opens, so one opens
    # at once; rendered when opened, a quick change of folder raced the first listing and gradio dropped the stale
    # explorer's event with a KeyError in the log)
    on_load = [fn for fn in app.fns.values() if (app._id, "load") in fn.targets
               and not isinstance(getattr(fn.fn, "__self__", None), gr.renderable.Renderable)]
    assert on_load and all(home_tab(c, tabs) in (None, tabs.children[0]) for fn in on_load for c in fn.outputs)
    assert by_elem_id["workspace-model-check"] in on_load[-1].outputs  # the bar is checked when the page opens

    training = by_elem_id["tab-training"]
    first_open = [fn for fn in app.fns.values() if (training._id, "select") in fn.targets]
    assert len(first_open) == 1
    fn = first_open[0]
    assert {by_elem_id["train-preset"], by_elem_id["train-status"]} <= set(fn.outputs)
    loaded = fn.outputs[0]
    shown = fn.fn(False, *[None] * (len(fn.inputs) - 1))
    assert shown[loaded] is True and by_elem_id["train-preset"] in shown
    again = fn.fn(True, *[None] * (len(fn.inputs) - 1))
    assert list(again) == [loaded]  # once a page: a later visit keeps what the person changed since

    assert {fn.api_visibility for fn in app.fns.values()} == {"private"}  # no API description in the page
