"""What the tiny vision-language models of tests/tinyvlm_*.py share: a byte-level BPE vocabulary of whole words."""
from tokenizers import pre_tokenizers

INIT_STD = 0.2  # larger than the usual 0.02, so that captions depend on the image and the prompt


def byte_level_vocab(words, first=()):
    """The tokens `first`, the 256 byte symbols, then one token per word preceded by a space ("Ġcat") with
    the merges that build it from the left ("Ġ c", "Ġc a", "Ġca t"); the prefixes become tokens too."""
    vocab = {token: i for i, token in enumerate(first)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges = []
    for word in words:
        token = "Ġ"
        for char in word:
            if token + char not in vocab:
                vocab[token + char] = len(vocab)
                merges.append((token, char))
            token += char
    return vocab, merges
