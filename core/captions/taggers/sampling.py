"""Seeded sampling for the captioners: every image draws its words from a generator of its own, seeded by the
run's seed and the image's path, so a caption does not depend on the batch it ran in and a rerun (or the preview)
writes the same one. transformers' `do_sample` draws from the global RNG instead, which ties every caption to its
batch."""
from __future__ import annotations

import hashlib
import os

import torch


def image_seed(seed: int, image_path: str | os.PathLike) -> int:
    """The sampling seed of one image: the same for the same seed and file, in any batch."""
    key = f"{seed}|{os.path.normcase(os.path.abspath(image_path))}"
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") >> 1


class NucleusSampler:
    """A logits processor that samples each row's next token (temperature, then top-p) from that row's own
    generator and leaves only that token possible, so greedy decoding picks it. Rows are beams-free: one per
    image, in `seeds` order."""

    def __init__(self, top_p: float, seeds: list[int], temperature: float = 1.0):
        self.top_p, self.temperature = top_p, temperature
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs, order = (scores.float() / self.temperature).softmax(-1).cpu().sort(-1, descending=True)
        outside = probs.cumsum(-1) - probs >= self.top_p  # the top token always stays
        probs[outside] = 0
        picked = [row_order[torch.multinomial(row, 1, generator=g)]
                  for row, row_order, g in zip(probs, order, self.generators)]
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(picked)), torch.cat(picked).to(scores.device)] = 0
        return chosen
