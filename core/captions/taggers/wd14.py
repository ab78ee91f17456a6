"""WD14 tags (job `tag`): booru-style tags from a SmilingWolf WD tagger (ONNX, v2 and v3 layout).

The model folder holds `model.onnx` and `selected_tags.csv` (tag_id,name,category,count; category
9 = rating, 0 = general, 4 = character); nothing is downloaded. Images are prepared as the reference
(SmilingWolf's wd-tagger space) does: transparency on white, padded to a centred white square,
resized bicubic to the graph's input side, RGB->BGR, float32 0..255, NHWC. Scores are the model's
sigmoid outputs: the most probable rating (with use_rating_tags), general tags scoring above
general_threshold, character tags above character_threshold, each category by score descending.

Tag text (core.captions.tags): underscores become spaces (remove_underscore) except in emoticons, then
`tag_replacement` applies. Tags the user lists (replacements, undesired_tags, always_first_tags) match
with underscores and spaces alike, and the last two also before or after replacement. Order written:
always_first_tags present (in the user's order), rating, character and general tags (general first
without character_tags_first).

existing_captions: `skip` leaves images with a caption file alone (they are not even decoded, so a
stopped run continues where it stopped); `overwrite` and `append` (new tags only) go through
core.captions.files, which backs up every changed file.
"""
from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from core.captions.files import write_generated_caption
from core.captions.taggers.common import caption_images, first_decodable, images_to_do
from core.captions.tags import parse_replacements, tag_key
from core.config import TagConfig
from core.dataset.images import open_image, to_rgb
from core.filenames import WD14_FILES
from core.jobs.protocol import JobContext

MODEL_HINT = ("download model.onnx and selected_tags.csv of a SmilingWolf WD tagger from Hugging Face "
              "(e.g. https://huggingface.co/SmilingWolf/wd-vit-tagger-v3) into this folder")
GENERAL, CHARACTER, RATING = 0, 4, 9


class Tagger(NamedTuple):
    session: object          # onnxruntime.InferenceSession
    input_name: str
    size: int                # side of the square input image
    fixed_batch: int | None  # the graph's batch dimension when it is a fixed number
    names: list[str]         # tag names in output order
    categories: np.ndarray   # category of each tag


def load_tagger(model_dir: str) -> Tagger:
    """The tagger of a local folder, on CUDA when onnxruntime offers it, else on the CPU. Sessions are
    cached per folder (and reloaded when its files change). ValueError for a wrong folder."""
    folder = Path(os.path.abspath(os.path.expanduser(model_dir.strip())))
    if not folder.is_dir():
        raise ValueError(f"WD14 tagger folder not found: {folder}; {MODEL_HINT}")
    missing = [name for name in WD14_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"the WD14 tagger folder {folder} has no {' and no '.join(missing)}; {MODEL_HINT}")
    stats = [(folder / name).stat() for name in WD14_FILES]
    return _load_tagger(str(folder), tuple((s.st_mtime_ns, s.st_size) for s in stats))


@functools.lru_cache(maxsize=2)
def _load_tagger(folder: str, _files_key: tuple) -> Tagger:
    import onnxruntime as ort

    names, categories = read_selected_tags(Path(folder) / "selected_tags.csv")
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()  # idle model threads yield: the decoding threads need the CPU between batches
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(Path(folder) / "model.onnx"), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types for a damaged or foreign file
        raise ValueError(f"cannot load {Path(folder) / 'model.onnx'} ({exc}); {MODEL_HINT}") from None
    graph_input, output = session.get_inputs()[0], session.get_outputs()[0]
    shape = list(graph_input.shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise ValueError(f"{folder}: model.onnx takes {graph_input.shape}, not a square NHWC RGB image "
                         "[batch, side, side, 3] like the WD taggers")
    scores = output.shape[-1] if output.shape else None
    if isinstance(scores, int) and scores != len(names):
        raise ValueError(f"{folder}: model.onnx gives {scores} scores but selected_tags.csv lists "
                         f"{len(names)} tags; the two files must come from the same tagger")
    return Tagger(session, graph_input.name, shape[1], shape[0] if isinstance(shape[0], int) else None,
                  names, categories)


def read_selected_tags(path: Path) -> tuple[list[str], np.ndarray]:
    """(tag names, categories) of a selected_tags.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [row["name"] for row in rows], np.array([int(row["category"]) for row in rows])
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a WD tagger tag list (columns tag_id,name,category,count): "
                         f"{type(exc).__name__}: {exc}") from None


def preprocess(image: Image.Image, size: int, max_pixels: int | None = None) -> np.ndarray:
    """[size, size, 3] float32 BGR in 0..255: transparency on white, padded to a centred white
    square, resized bicubic (see the module docstring). An image whose square would have more than
    `max_pixels` pixels (a 40000x2 strip: 1.6 Gpx) is shrunk to fit `size` first, then padded."""
    if image.mode != "RGB":
        image = to_rgb(image)
    side = max(image.size)
    if max_pixels and side * side > max_pixels:
        image = image.resize(tuple(max(1, round(d * size / side)) for d in image.size), Image.Resampling.BICUBIC)
        side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square)[:, :, ::-1].astype(np.float32, order="C")


def model_input(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """One image file as the model's input (runs on the decoding threads)."""
    return preprocess(open_image(path, max_pixels), size, max_pixels)


def predict(tagger: Tagger, inputs: list[np.ndarray]) -> np.ndarray:
    """[len(inputs), tags] scores; a batch shorter than a fixed batch dimension is padded."""
    batch = np.stack(inputs)
    if tagger.fixed_batch and len(inputs) < tagger.fixed_batch:
        batch = np.concatenate([batch, np.zeros((tagger.fixed_batch - len(inputs), *batch.shape[1:]),
                                                batch.dtype)])
    return tagger.session.run(None, {tagger.input_name: batch})[0][:len(inputs)]


@dataclass(frozen=True)
class TagRules:
    """The tag options of a TagConfig, applied to one model's tags. User-given tags are matched by
    `tag_key`, so `long_hair` and `long hair` name the same tag whatever remove_underscore says."""
    texts: list[str]          # the written form of every model tag ("" drops it)
    categories: np.ndarray
    undesired: frozenset[str]  # keys
    always_first: list[str]    # keys, in the user's order
    cfg: TagConfig

    @classmethod
    def build(cls, cfg: TagConfig, tagger: Tagger) -> TagRules:
        replacements = parse_replacements(cfg.tag_replacement)

        def text(name: str) -> str:
            name = name.strip()
            return replacements.get(tag_key(name), tag_key(name) if cfg.remove_underscore else name)

        return cls([text(name) for name in tagger.names], tagger.categories,
                   frozenset(tag_key(text(tag)) for tag in cfg.undesired_tags),
                   list(dict.fromkeys(tag_key(text(tag)) for tag in cfg.always_first_tags if tag.strip())), cfg)

    def select(self, scores: np.ndarray) -> list[str]:
        """The tags of one image, in the order they are written."""
        picked: list[int] = []
        ratings = np.flatnonzero(self.categories == RATING)
        if self.cfg.use_rating_tags and ratings.size:
            picked.append(int(ratings[np.argmax(scores[ratings])]))
        character = self._above(scores, CHARACTER, self.cfg.character_threshold)
        general = self._above(scores, GENERAL, self.cfg.general_threshold)
        picked += character + general if self.cfg.character_tags_first else general + character
        tags = list(dict.fromkeys(self.texts[i] for i in picked))
        by_key = {tag_key(tag): tag for tag in tags if tag and tag_key(tag) not in self.undesired}
        first = [by_key.pop(key) for key in self.always_first if key in by_key]
        return first + list(by_key.values())

    def _above(self, scores: np.ndarray, category: int, threshold: float) -> list[int]:
        index = np.flatnonzero((self.categories == category) & (scores > threshold))
        return index[np.argsort(-scores[index], kind="stable")].tolist()


def run(cfg: TagConfig, ctx: JobContext) -> dict:
    """The `tag` job: write WD14 tags to the caption file of every image."""
    tagger = load_tagger(cfg.model_dir)
    rules = TagRules.build(cfg, tagger)
    batch_size = tagger.fixed_batch or cfg.batch_size
    counts = {name: int((tagger.categories == c).sum()) for name, c in
              (("general", GENERAL), ("character", CHARACTER), ("rating", RATING))}
    ctx.log(f"WD14 tagger from {cfg.model_dir}: {len(tagger.names)} tags "
            f"({', '.join(f'{n} {name}' for name, n in counts.items())}), {tagger.size}x{tagger.size} input, "
            f"on {tagger.session.get_providers()[0]}")
    if tagger.fixed_batch and tagger.fixed_batch != cfg.batch_size:
        ctx.log(f"the model's batch size is fixed to {tagger.fixed_batch}: batch_size {cfg.batch_size} not used")
    return caption_images(
        cfg, ctx, "tag", batch_size, lambda path: model_input(path, tagger.size, cfg.max_image_pixels),
        lambda arrays: [rules.select(scores) for scores in predict(tagger, arrays)],
        lambda target, tags: write_generated_caption(target, tags, cfg.existing_captions, cfg.caption_separator))


def preview_tags(cfg: TagConfig, limit: int = 4) -> list[tuple[str, str]]:
    """(image path, the tags the run would write, or append) for the first `limit` readable images
    the run would tag. Writes nothing."""
    tagger = load_tagger(cfg.model_dir)
    rules = TagRules.build(cfg, tagger)
    todo, _ = images_to_do(cfg)
    chosen = first_decodable(todo, lambda path: model_input(path, tagger.size, cfg.max_image_pixels), limit)
    return [(str(path), cfg.caption_separator.join(rules.select(predict(tagger, [array])[0])))
            for path, array in chosen]
