"""Tiny random configurations of every supported family, shared by the architecture batteries."""

from __future__ import annotations

import torch
import transformers as tf
from torch import nn

VOCAB = 60


COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    num_labels=3,
    max_position_embeddings=64,
)


# Newer decoders: grouped-query attention, an explicit head size (their defaults are large).
DECODER = dict(**COMMON, num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=1)


PHI3 = {key: value for key, value in DECODER.items() if key != "head_dim"}  # fused qkv_proj, gate_up_proj


ENCODERS = {
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(**COMMON)),
    "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**COMMON)),
    "xlm-roberta": lambda: tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(**COMMON)),
    "camembert": lambda: tf.CamembertForSequenceClassification(tf.CamembertConfig(**COMMON)),
    "electra": lambda: tf.ElectraForSequenceClassification(tf.ElectraConfig(**COMMON, embedding_size=16)),
    "distilbert": lambda: tf.DistilBertForSequenceClassification(
        tf.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=40, num_labels=3, max_position_embeddings=64
        )
    ),
    "deberta-v2": lambda: tf.DebertaV2ForSequenceClassification(
        tf.DebertaV2Config(
            **COMMON, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"], pooler_hidden_act="gelu"
        )
    ),
    "albert": lambda: tf.AlbertForSequenceClassification(
        tf.AlbertConfig(**COMMON, embedding_size=16, num_hidden_groups=1, inner_group_num=1)
    ),
    "modernbert-cls": lambda: tf.ModernBertForSequenceClassification(
        tf.ModernBertConfig(**COMMON, global_attn_every_n_layers=2, local_attention=4, classifier_pooling="cls", pad_token_id=0)
    ),
    "modernbert-mean": lambda: tf.ModernBertForSequenceClassification(
        tf.ModernBertConfig(**COMMON, classifier_pooling="mean", pad_token_id=0)
    ),
    "gpt2": lambda: tf.GPT2ForSequenceClassification(
        tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            num_labels=3,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        )
    ),
    "llama": lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**COMMON, num_key_value_heads=2, pad_token_id=0)),
    "qwen2": lambda: tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**COMMON, num_key_value_heads=2, pad_token_id=0)),
    "mistral": lambda: tf.MistralForSequenceClassification(tf.MistralConfig(**COMMON, num_key_value_heads=1, pad_token_id=0)),
    "qwen3": lambda: tf.Qwen3ForSequenceClassification(tf.Qwen3Config(**DECODER)),
    "gemma": lambda: tf.GemmaForSequenceClassification(tf.GemmaConfig(**DECODER)),
    # eager: transformers 4.57 would run sdpa, which skips Gemma 2's attention soft-capping
    "gemma2": lambda: tf.Gemma2ForSequenceClassification(
        tf.Gemma2Config(**DECODER, sliding_window=4, attn_implementation="eager")
    ),
    "gemma3_text": lambda: tf.Gemma3TextForSequenceClassification(tf.Gemma3TextConfig(**DECODER, sliding_window=4)),
    "phi3": lambda: tf.Phi3ForSequenceClassification(tf.Phi3Config(**PHI3)),
}


#: Causal language models of the decoder families (an LM head over the whole vocabulary).
CAUSAL_LMS = {
    "gpt2-lm": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                        bos_token_id=1, eos_token_id=1)),
    "llama-lm": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**COMMON, num_key_value_heads=2)),
    "qwen2-lm": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**COMMON, num_key_value_heads=2)),
    "qwen3-lm": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**DECODER)),
    "gemma-lm": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**DECODER)),
    # without the final-logit soft-cap (test_gemma_logit_softcap_is_warned_and_not_decomposed has it)
    "gemma2-lm": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(
        **DECODER, sliding_window=4, final_logit_softcapping=None, attn_implementation="eager")),
    "gemma3_text-lm": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**DECODER, sliding_window=4)),
    "phi3-lm": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**PHI3)),
}


def forward_of(model: nn.Module):
    """A keyword forward function: decoders take past_key_values as their second argument."""
    return lambda input_ids, attention_mask: model(input_ids=input_ids, attention_mask=attention_mask).logits


def padded_batch(seed: int, lengths=(9, 6, 4)):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(2, VOCAB, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask
