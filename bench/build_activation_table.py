"""Rebuild the activation table shipped with the studio (core/data/activation_table.json): measure, under
fake tensors, every U-Net / VAE step shape that the built-in training presets and their memory savers need,
so Check settings finds them measured. Shapes already in the table are kept; `--fresh` measures all again.

    python bench/build_activation_table.py [--fresh] [--preset NAME ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import ConfigError  # noqa: E402
from core.config.presets import list_presets  # noqa: E402
from core.estimate.activations import SHIPPED_TABLE, measure, read_table, remember  # noqa: E402
from core.estimate.budget import unet_inputs, unet_shape, vae_shape  # noqa: E402
from core.estimate.savers import candidates  # noqa: E402
from core.estimate.skeleton import estimate_config, model_shape  # noqa: E402


def needed(values: dict) -> list[tuple]:
    """(Shape, config, kwargs) of the preset's settings and of each of its savers."""
    cfg = estimate_config(values)
    shape = model_shape(cfg)
    variants = [cfg]
    for _, changes in candidates(cfg):
        try:
            variants.append(estimate_config({**values, **changes}))
        except ConfigError:
            pass
    found = []
    for variant in variants:
        found.append((unet_shape(variant, shape), shape.configs["unet"], unet_inputs(shape)))
        if not variant.cache_latents:
            found.append((vae_shape(variant, shape), shape.configs["vae"], {}))
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--preset", action="append", default=[])
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    presets = [p for p in list_presets("train")[0] if p.builtin and (not args.preset or p.name in args.preset)]
    known = {} if args.fresh else read_table(SHIPPED_TABLE)
    todo = {}
    for preset in presets:
        for shape, config, kwargs in needed(preset.values):
            if shape.key not in known:
                todo[shape.key] = (shape, config, kwargs)
    print(f"{len(todo)} shape(s) to measure", flush=True)
    for key, (shape, config, kwargs) in todo.items():
        began = time.perf_counter()
        measured = measure(shape, config, **kwargs)
        remember(shape, measured, SHIPPED_TABLE)
        print(f"{key}: {measured.peak_above_weights / 2**20:.0f} MiB above the weights "
              f"({time.perf_counter() - began:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
