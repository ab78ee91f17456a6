"""Captions to text-encoder states for SD 1.x / 2.x / XL, the way kohya sd-scripts does it.

Users move their datasets and settings over from kohya, so every step here reproduces its
behaviour, quirks included:

- `process_caption`: prefix/suffix first, then caption dropout, then the tags; tags are only
  split, stripped and re-joined when shuffling or dropping tags; otherwise the caption passes
  through untouched (even with `keep_tokens` or a `keep_tokens_separator` in it).
- `tokenize_prompts`: a prompt longer than 75 tokens (`max_token_length` 150/225) is tokenized
  once to `max_token_length + 2` ids, then cut into 75-token chunks, each wrapped as
  `BOS <75 ids> LAST` where LAST is the final id of the whole sequence (EOS, or for SD2 EOS/pad).
  SD2 (pad id != EOS id) then patches each chunk: a chunk whose 76th id is text ends in EOS, and
  an empty chunk (`BOS pad ...`) becomes `BOS EOS pad ...`.
- `encode_prompts`: every chunk goes through the encoder on its own (no attention mask); the
  result is the first chunk's BOS state, the 75 inner states of every chunk and the last
  chunk's final state. kohya's SD2 branch of this step means to copy a pad state over the EOS
  of empty chunks, but its test compares a token id with the EOS *string*, which is never
  true, so SD2 is concatenated exactly like SD1; so is it here.
"""
from __future__ import annotations

import random

import torch

from core.captions.tags import split_tags

CHUNK = 75  # text tokens per encoder pass (77 positions less BOS and EOS)


def process_caption(caption: str, shuffle_caption: bool, keep_tokens: int, rng: random.Random, *,
                    caption_dropout_rate: float = 0.0, caption_tag_dropout_rate: float = 0.0,
                    caption_prefix: str = "", caption_suffix: str = "",
                    keep_tokens_separator: str = "") -> str:
    """The caption the model sees for one sample, in kohya's order (every draw from `rng`):

    1. `caption_prefix` / `caption_suffix` are glued on with a space *before* anything else, so
       they become part of the first / last tag ("pre" + "a, b" -> "pre a, b").
    2. With probability `caption_dropout_rate` the whole caption (prefix and suffix included)
       becomes "" (one draw, made only when the rate is above 0).
    3. Only with `shuffle_caption` or `caption_tag_dropout_rate` > 0 are the tags touched:
       - with `keep_tokens_separator` present in the caption, the tags before it stay in front,
         the tags after a second separator stay at the end, `keep_tokens` is ignored, and empty
         tags are dropped; otherwise the first `keep_tokens` tags stay in front and empty tags
         (from ",," or a trailing comma) are kept as tags;
       - the other tags are shuffled (with `shuffle_caption`), then each of them is dropped with
         probability `caption_tag_dropout_rate` (one draw per tag; kept tags never are);
       - the tags are stripped and joined with ", ".
       Otherwise the caption passes through untouched, separator included, as in kohya.
    """
    if caption_prefix:
        caption = caption_prefix + " " + caption
    if caption_suffix:
        caption = caption + " " + caption_suffix
    if caption_dropout_rate > 0 and rng.random() < caption_dropout_rate:
        return ""
    if not (shuffle_caption or caption_tag_dropout_rate > 0):
        return caption
    fixed_end: list[str] = []
    if keep_tokens_separator and keep_tokens_separator in caption:
        head, flex_part = caption.split(keep_tokens_separator, 1)
        if keep_tokens_separator in flex_part:
            flex_part, tail = flex_part.split(keep_tokens_separator, 1)
            fixed_end = split_tags(tail)
        fixed, flex = split_tags(head), split_tags(flex_part)
    else:
        tags = [tag.strip() for tag in caption.strip().split(",")]
        keep = max(keep_tokens, 0)
        fixed, flex = tags[:keep], tags[keep:]
    if shuffle_caption:
        rng.shuffle(flex)
    if caption_tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= caption_tag_dropout_rate]
    return ", ".join(fixed + flex + fixed_end)


def chunk_count(max_token_length: int | None) -> int:
    """Number of 77-id encoder passes for `max_token_length` (None = 75, the plain SD length)."""
    if max_token_length is None:
        return 1
    if max_token_length <= 0 or max_token_length % CHUNK:
        raise ValueError(f"max_token_length must be 75, 150 or 225 (a multiple of 75), "
                         f"not {max_token_length}")
    return max_token_length // CHUNK


def tokenize_prompts(tokenizer, captions: list[str], max_token_length: int | None) -> torch.LongTensor:
    """Token ids of shape [B, n_chunks, 77], n_chunks = max_token_length // 75 (see module doc)."""
    n_chunks = chunk_count(max_token_length)
    window = tokenizer.model_max_length  # 77
    if window != CHUNK + 2:
        raise ValueError(f"expected a CLIP tokenizer with model_max_length 77, not {window}")
    ids = tokenizer(list(captions), padding="max_length", truncation=True,
                    max_length=n_chunks * CHUNK + 2, return_tensors="pt").input_ids.long()
    if n_chunks == 1:
        return ids.unsqueeze(1)

    bos, last = ids[:, :1], ids[:, -1:]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, n_chunks * CHUNK + 1, CHUNK):
        chunk = torch.cat([bos, ids[:, start:start + CHUNK], last], dim=1)
        if pad != eos:  # SD2: pad "!" (id 0)
            ends_in_text = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[ends_in_text, -1] = eos
            chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The encoder's final LayerNorm (transformers 5 dropped the `text_model` level)."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def encode_chunks(text_encoder, input_ids: torch.LongTensor, clip_skip: int | None) -> torch.Tensor:
    """States of every 77-id chunk, [B * n_chunks, 77, hidden]: the last layer (after the final
    layer norm) for clip_skip 1/None, else hidden_states[-clip_skip] through the final norm."""
    ids = input_ids.reshape(-1, input_ids.shape[-1]).to(_device(text_encoder), torch.long)
    if clip_skip is None or clip_skip <= 1:
        return text_encoder(ids)[0]
    out = text_encoder(ids, output_hidden_states=True, return_dict=True)
    if clip_skip >= len(out.hidden_states):
        raise ValueError(f"clip_skip {clip_skip} is more than the text encoder's "
                         f"{len(out.hidden_states) - 1} layers")
    return final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])


def _check_ids(input_ids: torch.Tensor) -> None:
    if input_ids.dim() != 3:
        raise ValueError(f"input_ids must be [batch, chunks, 77], got {tuple(input_ids.shape)}")


def join_chunks(states: torch.Tensor) -> torch.Tensor:
    """[B, n_chunks, 77, hidden] chunk states -> [B, n_chunks * 75 + 2, hidden]: the first chunk's
    BOS state, the 75 inner states of every chunk, the last chunk's final state."""
    batch, n_chunks, window, _ = states.shape
    if n_chunks == 1:
        return states[:, 0]
    inner = states[:, :, 1:window - 1].reshape(batch, n_chunks * (window - 2), -1)
    return torch.cat([states[:, 0, :1], inner, states[:, -1, -1:]], dim=1)


def encode_prompts(text_encoder, input_ids: torch.LongTensor, clip_skip: int | None) -> torch.Tensor:
    """Encoder states [B, n_chunks * 75 + 2, hidden] for ids from `tokenize_prompts`."""
    _check_ids(input_ids)
    batch, n_chunks, window = input_ids.shape
    return join_chunks(encode_chunks(text_encoder, input_ids, clip_skip).reshape(batch, n_chunks, window, -1))


def encode_prompts_sdxl(text_encoders, input_ids: list[torch.LongTensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning, as its pipeline and kohya compute it, for ids from
    `tokenize_prompts` with each encoder's tokenizer: (states [B, n_chunks * 75 + 2, hidden1 +
    hidden2]: each encoder's penultimate layer, without the final layer norm, chunks joined as in
    `encode_prompts`; pooled [B, projection]: the second encoder's projected state at the EOS
    token of the first chunk)."""
    states = []
    for text_encoder, ids in zip(text_encoders, input_ids, strict=True):
        _check_ids(ids)
        batch, n_chunks, window = ids.shape
        out = text_encoder(ids.reshape(-1, window).to(_device(text_encoder), torch.long),
                           output_hidden_states=True, return_dict=True)
        states.append(join_chunks(out.hidden_states[-2].reshape(batch, n_chunks, window, -1)))
    pooled = out.text_embeds.reshape(batch, n_chunks, -1)[:, 0]
    return torch.cat(states, dim=-1), pooled
