"""Tag text: the one way to split a caption into tags, join tags back, compare tags and read tag
replacements. A leaf module (standard library only), so the config schema, the cleaning rules and the
taggers can all use it without importing one another.

A tag is a comma-separated part of a caption, stripped of surrounding space; empty parts are not tags.
"""
from __future__ import annotations

import re

# Emoticon tags whose underscores are part of the face (the WD tagger reference's list and kohya's additions).
KAOMOJIS = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
    "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||", ">_@", "^_o", "c_c", "~_~", ";_;", "0_o"})


def tag_key(tag: str) -> str:
    """The tag with underscores as spaces, except in emoticons (KAOMOJIS)."""
    return tag if tag in KAOMOJIS else tag.replace("_", " ")


def split_tags(caption: str) -> list[str]:
    """The tags of a caption in order: comma-separated parts, stripped, empty ones dropped."""
    return [tag for tag in (part.strip() for part in caption.split(",")) if tag]


def join_tags(tags: list[str]) -> str:
    """The tags as one caption, separated by ", " (each stripped, empty ones dropped)."""
    return ", ".join(tag for tag in (t.strip() for t in tags) if tag)


def parse_replacements(items: list[str]) -> dict[str, str]:
    """{key of old: new} from `old,new` lines (`\\,` is a comma inside a tag; an empty new drops the tag)."""
    pairs = {}
    for item in items:
        if not item.strip():
            continue
        parts = [part.replace("\\,", ",").strip() for part in re.split(r"(?<!\\),", item)]
        if len(parts) != 2 or not parts[0]:
            raise ValueError(f"tag_replacement {item!r}: expected one `old,new` pair a line "
                             "(write \\, for a comma inside a tag)")
        pairs[tag_key(parts[0])] = parts[1]
    return pairs
