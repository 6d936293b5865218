"""A word-level tokenizer over a short vocabulary, for the tiny causal language models."""

from __future__ import annotations

import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

#: The vocabulary of the tiny causal LMs: padding, unknown, then words (ids in this order).
LLM_WORDS = ["<pad>", "<unk>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "and", "slow", "big", "small"]


def word_level_tokenizer(words: list[str]) -> tf.PreTrainedTokenizerFast:
    """Splits on whitespace; token ``words[i]`` has id ``i``; ``<pad>`` and ``<unk>`` must be among ``words``."""
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>")
