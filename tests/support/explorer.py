"""The classifier vocabulary and sentence of the explorer's tests (computations and server)."""

from __future__ import annotations

#: Words of the explorer tests' BERT tokenizer (after the special tokens), markup characters included.
WORDS = [
    "a",
    "good",
    "bad",
    "film",
    "not",
    "very",
    "dull",
    "fine",
    "<",
    ">",
    "img",
    "src",
    "=",
    "x",
    "onerror",
    "alert",
    "(",
    "1",
    ")",
]
#: The sentence the explorer tests explain (every word in ``WORDS``).
SENTENCE = "a very good film not dull"
