"""The tiny causal language models over a short vocabulary, and a word-level tokenizer for them."""

from __future__ import annotations

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from captum_decompx.testing import randomize_parameters

#: The vocabulary of the tiny causal LMs: padding, unknown, then words (ids in this order).
LLM_WORDS = ["<pad>", "<unk>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "and", "slow", "big", "small"]


def word_level_tokenizer(words: list[str]) -> tf.PreTrainedTokenizerFast:
    """Splits on whitespace; token ``words[i]`` has id ``i``; ``<pad>`` and ``<unk>`` must be among ``words``."""
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>")


def tiny_llama() -> tf.LlamaForCausalLM:
    """A two-layer Llama causal LM over ``LLM_WORDS`` with grouped-query attention, parameters redrawn (seed 0)."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(LLM_WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=40, max_position_embeddings=64)
    return randomize_parameters(tf.LlamaForCausalLM(config), seed=0)


def tiny_gpt2() -> tf.GPT2LMHeadModel:
    """A two-layer GPT-2 causal LM over ``LLM_WORDS`` as Hugging Face initialises it (seed 1; zero biases), in eval mode."""
    torch.manual_seed(1)
    config = tf.GPT2Config(vocab_size=len(LLM_WORDS), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)
    return tf.GPT2LMHeadModel(config).eval()
