"""Caption cleaning rules: parse the `rules` lines of CleanConfig and apply them to a caption's text.

One rule a line, `name` or `name: argument`; names are case-insensitive, blank lines and `#` comments
are skipped. Captions are comma-separated tag lists (WD14) or sentences (BLIP). Tag rules split the
text on commas, strip each tag and join the tags with ", " (core.captions.tags), so every tag rule
also normalises the separators (empty tags from ",," or a trailing comma go). `replace`,
`replace_regex` and `lowercase` work on the whole text and leave separators alone. Tags the user names (`remove`, `prefix`, `suffix`)
match case-insensitively; `dedupe` and `drop_subsumed` compare tags exactly.

Cleaning twice equals cleaning once for every rule except `replace` and `replace_regex`, which are
idempotent only when the replacement cannot make a new match (`replace: a -> aa` is not).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from core.captions.tags import join_tags, split_tags, tag_key

TextFn = Callable[[str], str]
TagFn = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Rule:
    name: str
    argument: str
    apply: TextFn = field(repr=False, compare=False)


def _on_tags(fn: TagFn) -> TextFn:
    return lambda text: join_tags(fn(split_tags(text)))


def _underscores(tags: list[str]) -> list[str]:
    return split_tags(join_tags([tag_key(tag) for tag in tags]))


def _whitespace(tags: list[str]) -> list[str]:
    return [" ".join(tag.split()) for tag in tags]


def _dedupe(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


RATING = re.compile(r"general|sensitive|questionable|explicit|safe|rating\s*[:_ ].*", re.IGNORECASE)
PREFIXED_RATING = re.compile(r"rating\s*[:_ ].*", re.IGNORECASE)


def _drop_ratings(tags: list[str]) -> list[str]:
    return [tag for tag in tags if not RATING.fullmatch(tag)]


def _subsumed(tag: str, tags: list[str], head: re.Pattern | None = None) -> bool:
    """True when another tag is `<words> <tag>` (the words fully matching `head` when given)."""
    return any(other.endswith(" " + tag) and (head is None or head.fullmatch(other[:-len(tag) - 1]))
               for other in tags)


def _drop_subsumed(tags: list[str]) -> list[str]:
    return [tag for tag in tags if not _subsumed(tag, tags)]


# sd_normalize: sd-scripts finetune/clean_captions_and_tags.py, reimplemented. Per-person tags: with
# several people ("girls"/"boys" in a tag), a group with more than one matching tag is dropped whole.
HAIR_LENGTH = "(?:long|short|medium) hair"
PER_PERSON = [re.compile(p) for p in (
    HAIR_LENGTH, "(?:bob|hime) cut", r"[\w-]+ eyes", r"[\w-]+ sleeves|sleeveless",
    r"ponytail|braid|ahoge|twintails|sidelocks|two side up|two tails|single (?:hair|side) bun|[\w-]+ (?:bun|braid)",
    rf"(?!{HAIR_LENGTH}$)[\w-]+ hair")]  # one-word hair tags (colours, but also e.g. wavy hair)
SD_SUBSUMABLE = re.compile(r"[\w-]+|hair ornament")
PLAIN_WORDS = re.compile(r"\w+(?: \w+)*")
# Sentence rewrites, repeated until none applies: whole words only (sd-scripts replaces inside words too,
# "personal"), case-sensitive as BLIP writes lowercase, and "an girl" (from "an anime woman") made "a girl".
PROSE_SWAPS = [(re.compile(rf"\b(?:{old})\b"), new) for old, new in (
    ("anime anime", "anime"), ("young ", ""),
    ("(?:anime|cartoon) (?:female|lady|character|woman|girl)", "girl"), ("(?:anime|cartoon) women", "girls"),
    ("lady|female|woman|person", "girl"), ("women|people", "girls"),
    ("a cartoon (figure|picture|drawing)", r"a \1"), ("a cartoon anime drawing", "a drawing"),
    ("a cartoon image|an anime cartoon image", "an image"), ("girl girl", "girl"), ("an (girls?)", r"a \1"))]


def _is_prose(tags: list[str]) -> bool:
    """A sentence caption: some comma-separated part starts with "a"/"an" or has five words or more."""
    return any(len(words := tag.split()) >= 5 or words[0].lower() in ("a", "an") for tag in tags)


def _swap_words(text: str) -> str:
    before = None
    while text != before:
        before = text
        for pattern, new in PROSE_SWAPS:
            text = pattern.sub(new, text)
    return text


def _sd_normalize(tags: list[str]) -> list[str]:
    """Underscores as `underscores`; then sentences get PROSE_SWAPS; tag lists lose `rating:*` tags,
    conflicting per-person tags (PER_PERSON) and one-word tags (or "hair ornament") that a longer tag
    of plain words ends with."""
    tags = _underscores(tags)
    if _is_prose(tags):
        tags = split_tags(_swap_words(join_tags(tags)))
    if _is_prose(tags):
        return tags
    tags = [tag for tag in tags if not PREFIXED_RATING.fullmatch(tag)]
    if any("girls" in tag or "boys" in tag for tag in tags):
        for pattern in PER_PERSON:
            if sum(bool(pattern.fullmatch(tag)) for tag in tags) > 1:
                tags = [tag for tag in tags if not pattern.fullmatch(tag)]
    return [tag for tag in tags if not (SD_SUBSUMABLE.fullmatch(tag) and _subsumed(tag, tags, PLAIN_WORDS))]


def _regex(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"bad regular expression {pattern!r}: {err}") from None


def _arrow(argument: str) -> tuple[str, str]:
    """(old, new) of `old -> new`, both stripped; new may be empty."""
    old, arrow, new = (argument + " ").partition(" -> ")
    if not arrow or not old.strip():
        raise ValueError("expected `old -> new` (with spaces around ->)")
    return old.strip(), new.strip()


def _one_tag(argument: str) -> str:
    if "," in argument:
        raise ValueError("takes one tag (no commas)")
    return argument


def _without(tags: list[str], tag: str) -> list[str]:
    return [t for t in tags if t.casefold() != tag.casefold()]


def _remove(argument: str) -> TextFn:
    unwanted = {tag.casefold() for tag in split_tags(argument)}
    if not unwanted:
        raise ValueError("needs at least one tag")
    return _on_tags(lambda tags: [tag for tag in tags if tag.casefold() not in unwanted])


def _remove_regex(argument: str) -> TextFn:
    pattern = _regex(argument)
    return _on_tags(lambda tags: [tag for tag in tags if not pattern.fullmatch(tag)])


def _replace(argument: str) -> TextFn:
    old, new = _arrow(argument)
    return lambda text: text.replace(old, new)


def _replace_regex(argument: str) -> TextFn:
    pattern_text, new = _arrow(argument)
    pattern = _regex(pattern_text)
    try:
        pattern.sub(new, "")  # checks the replacement's group references now rather than on a caption
    except (re.error, IndexError) as err:
        raise ValueError(f"bad replacement {new!r}: {err}") from None
    return lambda text: pattern.sub(new, text)


def _prefix(argument: str) -> TextFn:
    tag = _one_tag(argument)
    return _on_tags(lambda tags: [tag] + _without(tags, tag))


def _suffix(argument: str) -> TextFn:
    tag = _one_tag(argument)
    return _on_tags(lambda tags: _without(tags, tag) + [tag])


def _max_tags(argument: str) -> TextFn:
    count = int(argument) if re.fullmatch("[0-9]+", argument) else 0
    if count < 1:
        raise ValueError(f"needs a positive whole number, not {argument!r}")
    return _on_tags(lambda tags: tags[:count])


def _fixed(fn: TextFn) -> Callable[[str], TextFn]:
    return lambda _argument: fn


class _Kind(NamedTuple):
    build: Callable[[str], TextFn]  # argument -> the rule's text function; ValueError for a bad argument
    template: str                   # example line (a `:` in it means the rule takes an argument)
    summary: str                    # describe(); {arg} is the argument


_KINDS: dict[str, _Kind] = {
    "underscores": _Kind(_fixed(_on_tags(_underscores)), "underscores",
                         "underscores to spaces in each tag (emoticons like ^_^ kept)"),
    "whitespace": _Kind(_fixed(_on_tags(_whitespace)), "whitespace",
                        "collapse spaces, tags separated by ', ', empty tags removed"),
    "dedupe": _Kind(_fixed(_on_tags(_dedupe)), "dedupe", "remove repeated tags (the first one stays)"),
    "remove": _Kind(_remove, "remove: watermark, signature", "remove the tags {arg} (any case)"),
    "remove_regex": _Kind(_remove_regex, "remove_regex: (?:english|japanese) text",
                          "remove the tags matching {arg} fully"),
    "replace": _Kind(_replace, "replace: 1girl -> 1woman", "replace text: {arg}"),
    "replace_regex": _Kind(_replace_regex, r"replace_regex: \bgrey\b -> gray",
                           "replace regular expression matches: {arg}"),
    "prefix": _Kind(_prefix, "prefix: mytrigger", "put {arg} first (added when missing)"),
    "suffix": _Kind(_suffix, "suffix: mystyle", "put {arg} last (added when missing)"),
    "drop_ratings": _Kind(_fixed(_on_tags(_drop_ratings)), "drop_ratings",
                          "remove rating tags (general, sensitive, questionable, explicit, safe, rating:*)"),
    "drop_subsumed": _Kind(_fixed(_on_tags(_drop_subsumed)), "drop_subsumed",
                           "remove tags that a longer tag ends with (shirt when white shirt is there)"),
    "sd_normalize": _Kind(_fixed(_on_tags(_sd_normalize)), "sd_normalize",
                          "sd-scripts caption cleaning (ratings, per-person tags, subsumed words, woman -> girl)"),
    "lowercase": _Kind(_fixed(str.lower), "lowercase", "lowercase the whole caption"),
    "max_tags": _Kind(_max_tags, "max_tags: 40", "keep the first {arg} tags"),
}
RULE_TEMPLATES: dict[str, str] = {name: kind.template for name, kind in _KINDS.items()}


def _parse_line(line: str) -> Rule:
    name, _, argument = line.partition(":")
    name, argument = name.strip().lower(), argument.strip()
    kind = _KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown rule {name!r} (known rules: {', '.join(_KINDS)})")
    if ":" in kind.template and not argument:
        raise ValueError(f"{name} needs an argument, e.g. `{kind.template}`")
    if ":" not in kind.template and argument:
        raise ValueError(f"{name} takes no argument")
    try:
        return Rule(name, argument, kind.build(argument))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def parse_rules(lines: list[str]) -> list[Rule]:
    """The rules of `lines` in order; ValueError naming the (1-based) line and what is wrong."""
    rules = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rules.append(_parse_line(line))
        except ValueError as err:
            raise ValueError(f"rule line {number} ({line.strip()!r}): {err}") from None
    return rules


def clean_caption(text: str, rules: list[Rule]) -> str:
    """`text` with `rules` applied in order."""
    for rule in rules:
        text = rule.apply(text)
    return text


def describe(rule: Rule) -> str:
    """One line saying what the rule does, for the GUI."""
    return _KINDS[rule.name].summary.format(arg=rule.argument)
