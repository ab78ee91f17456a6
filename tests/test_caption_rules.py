"""Caption cleaning rules (core.captions.rules): parsing, each rule, order, idempotence."""
from __future__ import annotations

import random

import pytest

from core.captions.rules import RULE_TEMPLATES, clean_caption, describe, parse_rules
from core.config import CleanConfig


def clean(text: str, *lines: str) -> str:
    return clean_caption(text, parse_rules(list(lines)))


RULE_CASES = {
    "underscores": [
        ("long_hair, blue_eyes", "long hair, blue eyes"),
        ("^_^, >_<, smiling_face, o_o", "^_^, >_<, smiling face, o_o"),
        ("a photo of my_cat", "a photo of my cat"),
        ("猫_耳, café_au_lait", "猫 耳, café au lait"),
        ("_, a_ ,,b", "a, b"),
    ],
    "whitespace": [
        ("  a   b ,c,,  d ,  ", "a b, c, d"),
        ("a\tgirl\n  standing in   the rain", "a girl standing in the rain"),
        ("1girl,solo", "1girl, solo"),
        ("\u3000全角\u3000 スペース , 😀 ", "全角 スペース, 😀"),
        (", ,", ""),
    ],
    "dedupe": [
        ("a, b, a, c, b", "a, b, c"),
        ("Smile, smile", "Smile, smile"),
        ("^_^,^_^ , x", "^_^, x"),
        ("😀, 😀, 猫", "😀, 猫"),
    ],
    "remove: watermark, signature": [
        ("1girl, Watermark, signature, text", "1girl, text"),
        ("watermark", ""),
        ("a watermark on a sign", "a watermark on a sign"),
    ],
    "remove: ^_^, white shirt": [
        ("^_^, white shirt, white shirt dress", "white shirt dress"),
    ],
    r"remove_regex: .*\btext": [
        ("english text, text, textured, 1girl", "textured, 1girl"),
        ("a sign with text on it", "a sign with text on it"),
    ],
    "remove_regex: [a-z]+ hair": [
        ("long hair, very long hair, Blonde hair", "very long hair, Blonde hair"),
    ],
    "remove_regex: é+": [
        ("é, ée, éé", "ée"),
    ],
    "replace: 1girl -> woman": [
        ("1girl, solo, 1girls", "woman, solo, womans"),
        ("1girl ,1girl", "woman ,woman"),  # whole text: separators stay as they are
    ],
    "replace: watermark ->": [
        ("a, watermark, b", "a, , b"),
    ],
    "replace: cat -> dog": [
        ("a cat on a mat", "a dog on a mat"),
    ],
    r"replace_regex: (\w+)_\((\w+)\) -> \1 (\2)": [
        ("saber_(fate), x", "saber (fate), x"),
    ],
    r"replace_regex: \s*,\s* -> ,": [
        ("a ,b,  c", "a,b,c"),
    ],
    "replace_regex: (?i)grey -> gray": [
        ("Grey hair, a GREY cat", "gray hair, a gray cat"),
    ],
    "prefix: sks": [
        ("1girl, sks, smile", "sks, 1girl, smile"),
        ("1girl", "sks, 1girl"),
        ("", "sks"),
        ("SKS, x, sks", "sks, x"),
        ("a photo of a dog", "sks, a photo of a dog"),
    ],
    "suffix: by artist": [
        ("by artist, 1girl, smile", "1girl, smile, by artist"),
        ("1girl,smile,", "1girl, smile, by artist"),
        ("", "by artist"),
    ],
    "prefix: ^_^": [
        ("smile, ^_^", "^_^, smile"),
    ],
    "drop_ratings": [
        ("general, 1girl, sensitive, questionable, explicit, safe", "1girl"),
        ("rating:safe, rating_explicit, rating questionable, Rating:Q, smile", "smile"),
        ("explicit content, safety, general store", "explicit content, safety, general store"),
    ],
    "drop_subsumed": [
        ("shirt, white shirt, skirt, miniskirt", "white shirt, skirt, miniskirt"),
        ("long hair, very long hair, hair", "very long hair"),
        ("t-shirt, shirt", "t-shirt, shirt"),
        ("Shirt, white shirt", "Shirt, white shirt"),
        ("猫, 白い 猫", "白い 猫"),
    ],
    "sd_normalize": [
        # several people: per-person groups with more than one tag go, a single hair length stays
        ("2girls, long hair, short hair, blue eyes, red eyes, blonde hair, black hair, smile",
         "2girls, smile"),
        ("2girls, long hair, blonde hair, black hair", "2girls, long hair"),
        ("multiple boys, ponytail, twintails, long sleeves, sleeveless, bob cut", "multiple boys, bob cut"),
        ("1girl, blonde hair, black hair, blue eyes, red eyes", "1girl, blonde hair, black hair, blue eyes, red eyes"),
        # deepdanbooru ratings, underscores, subsumed one-word tags and hair ornament
        ("1girl, rating:safe, general", "1girl, general"),
        ("long_hair, ^_^, white_shirt, shirt", "long hair, ^_^, white shirt"),
        ("hair ornament, red hair ornament, long hair, very long hair", "red hair ornament, long hair, very long hair"),
        ("shirt, two-tone shirt, skirt, miniskirt", "shirt, two-tone shirt, skirt, miniskirt"),
        # sentences: woman/person/... -> girl, whole words only; no tag cleaning
        ("a young woman holding a cartoon picture", "a girl holding a picture"),
        ("an anime woman with people", "a girl with girls"),
        ("a girl girl girl", "a girl"),
        ("a personal computer near womenswear", "a personal computer near womenswear"),
        ("a photo, shirt, white shirt, rating:safe", "a photo, shirt, white shirt, rating:safe"),
        # a sentence that the rewrites turn into a short tag list is cleaned as tags too
        ("young woman in the rain, shirt, white shirt", "girl in the rain, white shirt"),
    ],
    "lowercase": [
        ("1Girl, ÉCOLE, ^_^, XD", "1girl, école, ^_^, xd"),
        ("A ,B", "a ,b"),
        ("A Photo Of A Cat.", "a photo of a cat."),
    ],
    "max_tags: 2": [
        ("a, b, c", "a, b"),
        ("a", "a"),
        ("a,,b,c", "a, b"),
        ("a photo, of a cat, at night", "a photo, of a cat"),
    ],
}


@pytest.mark.parametrize("line, text, expected",
                         [(line, text, expected) for line, cases in RULE_CASES.items() for text, expected in cases])
def test_rule(line: str, text: str, expected: str) -> None:
    assert clean(text, line) == expected


def test_every_rule_has_cases() -> None:
    tested = {parse_rules([line])[0].name for line in RULE_CASES}
    assert tested == set(RULE_TEMPLATES)


def test_order_matters() -> None:
    assert clean("long_hair, smile", "underscores", "remove: long hair") == "smile"
    assert clean("long_hair, smile", "remove: long hair", "underscores") == "long hair, smile"
    assert clean("a, a, b", "max_tags: 2", "dedupe") == "a"
    assert clean("a, a, b", "dedupe", "max_tags: 2") == "a, b"


def test_parse_skips_blanks_and_comments_and_ignores_case() -> None:
    rules = parse_rules(["", "# a comment", "  DeDupe ", "   # indented comment", "Remove : a, b", "PREFIX:sks"])
    assert [(rule.name, rule.argument) for rule in rules] == [("dedupe", ""), ("remove", "a, b"), ("prefix", "sks")]
    assert parse_rules([]) == []


@pytest.mark.parametrize("lines, fragments", [
    (["dedupe", "frobnicate"], ["line 2", "'frobnicate'", "unknown rule", "underscores", "max_tags"]),
    (["", "# c", "remove"], ["line 3", "'remove'", "needs an argument"]),
    (["remove:  , "], ["line 1", "remove", "at least one tag"]),
    (["dedupe: 3"], ["line 1", "takes no argument"]),
    (["whitespace", "remove_regex: ("], ["line 2", "bad regular expression", "missing )"]),
    (["max_tags: 0"], ["line 1", "positive whole number"]),
    (["max_tags: many"], ["line 1", "positive whole number", "'many'"]),
    (["max_tags: 2.5"], ["line 1", "positive whole number"]),
    (["replace: a->b"], ["line 1", "old -> new"]),
    (["replace: a"], ["line 1", "old -> new"]),
    (["replace:  -> b"], ["line 1", "old -> new"]),
    ([r"replace_regex: a -> \1"], ["line 1", "bad replacement", "group reference"]),
    (["replace_regex: [ -> x"], ["line 1", "bad regular expression"]),
    (["prefix: a, b"], ["line 1", "one tag"]),
])
def test_parse_errors_name_the_line(lines: list[str], fragments: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        parse_rules(lines)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_config_rejects_a_bad_rule() -> None:
    with pytest.raises(ValueError, match=r"rules[\s\S]*line 2 \('nope'\): unknown rule"):
        CleanConfig.model_validate({"rules": ["dedupe", "nope"]})


def test_templates_parse_and_describe() -> None:
    for name, line in RULE_TEMPLATES.items():
        (rule,) = parse_rules([line])
        assert rule.name == name
        text = describe(rule)
        assert text and "\n" not in text
        assert rule.argument in text


VOCABULARY = [
    "1girl", "2girls", "solo", "long_hair", "long hair", "short hair", "very long hair", "blonde_hair", "black hair",
    "blue_eyes", "red eyes", "shirt", "white_shirt", "white shirt", "skirt", "miniskirt", "^_^", ">_<", "smile",
    "Smile", "rating:safe", "general", "explicit", "hair ornament", "red hair ornament", "ponytail", "twintails",
    "猫耳", "café", "😀", "mytrigger", "MyTrigger", "watermark", "Signature", "english text", "multiple boys",
    "long sleeves", "sleeveless", "bob cut", "  padded  tag ", "a_b_c", "_", "İstanbul", "ß",
]
SEPARATORS = [", ", ",", " , ", ",, ", ",\n", " ,\t"]
SENTENCES = [
    "a young woman sitting on a bench",
    "an anime woman with long hair, standing in the rain",
    "A photo of a cat.",
    "two people walking   down the street\tat night",
    "a cartoon picture of a girl girl",
    "ein Mädchen mit langen Haaren, das im Regen steht",
    "写真、女の子、笑顔",
    "emoji party 🎉🎉, 🎉",
    "",
    "   ",
    ",,,",
    "a, , b,",
    "young woman in the rain, shirt, white shirt",
    "lady_in_red holding an umbrella near some people",
]


def corpus() -> list[str]:
    rng = random.Random(1234)
    captions = list(SENTENCES)
    for _ in range(16):
        tags = rng.choices(VOCABULARY, k=rng.randint(1, 16))
        text = "".join(tag + rng.choice(SEPARATORS) for tag in tags)
        captions.append(text if rng.random() < 0.5 else text.rstrip(", \n\t"))
    return captions


IDEMPOTENT = [line for name, line in RULE_TEMPLATES.items() if name not in ("replace", "replace_regex")] + [
    "prefix: ^_^", "suffix: 猫耳", "remove: long hair, 1GIRL", "remove_regex: .*(?:hair|eyes)", "max_tags: 1",
    "max_tags: 3", "replace: woman -> girl", r"replace_regex: \s+ -> _",
]


DEFAULT_RULES = CleanConfig.model_fields["rules"].get_default(call_default_factory=True)


def test_default_rules() -> None:
    assert DEFAULT_RULES == ["underscores", "whitespace", "dedupe"]
    assert clean(" long_hair ,^_^,, long hair ,smile,", *DEFAULT_RULES) == "long hair, ^_^, smile"


@pytest.mark.parametrize("lines", [[line] for line in IDEMPOTENT] + [DEFAULT_RULES])
def test_cleaning_twice_equals_cleaning_once(lines: list[str]) -> None:
    rules = parse_rules(lines)
    for text in corpus():
        once = clean_caption(text, rules)
        assert clean_caption(once, rules) == once, (lines, text)


def test_corpus_is_varied() -> None:
    captions = corpus()
    assert len(captions) == 30 and len(set(captions)) == 30
    changed = {line: sum(clean(text, line) != text for text in captions) for line in IDEMPOTENT}
    assert all(changed.values()), changed  # every rule does something on the corpus


def test_replace_can_be_not_idempotent() -> None:
    once = clean("a cat", "replace: a -> aa")
    assert once == "aa caat" and clean(once, "replace: a -> aa") != once
