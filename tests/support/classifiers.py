"""Tiny random sequence classifiers of the BERT-like families, padded batches of random tokens, a
word-level WordPiece tokenizer, and a comparison at the scale of the expected values.

The models are float32, in eval mode, with every parameter re-drawn under a seed (weights and
biases with a non-trivial scale, LayerNorm gains around one with visible noise), so that bias
rules, normalization statistics and the feed-forward networks all change the attributions.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    CamembertConfig,
    CamembertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from captum_decompx.testing import randomize_parameters  # noqa: E402

VOCAB_SIZE = 100
HIDDEN_SIZE = 32
HEADS = 4
INTERMEDIATE_SIZE = 37
LAYERS = 2
NUM_LABELS = 3
# Real tokens are drawn from [FIRST_REAL_TOKEN, VOCAB_SIZE): never a padding id (0 or 1).
FIRST_REAL_TOKEN = 4
# Lengths of the examples of the standard right-padded batch.
BATCH_LENGTHS = (9, 6, 4)

LINEAR_STD = 0.25
BIAS_STD = 0.3
EMBEDDING_STD = 0.5
NORM_GAIN_STD = 0.3


def _bert_like(config_class, model_class, **extra) -> Callable[..., nn.Module]:
    def build(num_labels: int, hidden_act: str) -> nn.Module:
        config = config_class(
            vocab_size=VOCAB_SIZE,
            hidden_size=HIDDEN_SIZE,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE_SIZE,
            max_position_embeddings=64,
            hidden_act=hidden_act,
            num_labels=num_labels,
            **extra,
        )
        return model_class(config)

    return build


def _distilbert(num_labels: int, hidden_act: str) -> nn.Module:
    config = DistilBertConfig(
        vocab_size=VOCAB_SIZE,
        dim=HIDDEN_SIZE,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=INTERMEDIATE_SIZE,
        max_position_embeddings=64,
        activation=hidden_act,
        num_labels=num_labels,
    )
    return DistilBertForSequenceClassification(config)


#: name -> builder(num_labels, hidden_act) of an untrained model of that architecture.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "bert": _bert_like(BertConfig, BertForSequenceClassification),
    "roberta": _bert_like(RobertaConfig, RobertaForSequenceClassification, pad_token_id=1),
    "xlm-roberta": _bert_like(XLMRobertaConfig, XLMRobertaForSequenceClassification, pad_token_id=1),
    "camembert": _bert_like(CamembertConfig, CamembertForSequenceClassification, pad_token_id=1),
    "electra": _bert_like(ElectraConfig, ElectraForSequenceClassification, embedding_size=HIDDEN_SIZE),
    # ELECTRA with a projection from a smaller embedding to the hidden size.
    "electra-small-embedding": _bert_like(ElectraConfig, ElectraForSequenceClassification, embedding_size=16),
    "distilbert": _distilbert,
}
ARCHITECTURE_NAMES = tuple(ARCHITECTURES)


def reinit_parameters(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of ``model`` in place under ``seed``.

    Linear weights ~ N(0, 0.25^2), biases ~ N(0, 0.3^2), embeddings ~ N(0, 0.5^2), normalization
    gains ~ 1 + N(0, 0.3^2): large enough that biases and LayerNorm parameters matter.
    """
    return randomize_parameters(
        model, seed, weight_std=LINEAR_STD, bias_std=BIAS_STD, embedding_std=EMBEDDING_STD, norm_gain_std=NORM_GAIN_STD
    )


def make_model(architecture: str, seed: int = 0, num_labels: int = NUM_LABELS, hidden_act: str = "gelu") -> nn.Module:
    """A tiny float32 ``*ForSequenceClassification`` in eval mode, parameters re-drawn under ``seed``."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[architecture](num_labels, hidden_act)
    reinit_parameters(model, seed)
    return model.eval()


_MODEL_CACHE: dict[tuple, nn.Module] = {}


def cached_model(architecture: str, seed: int = 0, num_labels: int = NUM_LABELS, hidden_act: str = "gelu") -> nn.Module:
    """Like :func:`make_model`, built once per session. Only for tests that do not modify the model."""
    key = (architecture, seed, num_labels, hidden_act)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = make_model(architecture, seed, num_labels, hidden_act)
    return _MODEL_CACHE[key]


@dataclass
class PaddedBatch:
    """A right-padded batch.

    Attributes:
        input_ids: (batch, seq).
        attention_mask: (batch, seq), 1 on real tokens.
        lengths: real length of each example.
    """

    input_ids: Tensor
    attention_mask: Tensor
    lengths: tuple[int, ...]

    def example(self, index: int) -> tuple[Tensor, Tensor]:
        """Example ``index`` alone, without padding: input_ids (1, n), attention_mask (1, n)."""
        length = self.lengths[index]
        return self.input_ids[index : index + 1, :length], self.attention_mask[index : index + 1, :length]


def padding_id(model: nn.Module) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def make_padded_batch(lengths=BATCH_LENGTHS, seed: int = 0, pad_token_id: int = 0) -> PaddedBatch:
    """Random real tokens (never a padding id), right-padded with ``pad_token_id`` to the longest."""
    generator = torch.Generator().manual_seed(1000 + seed)
    seq = max(lengths)
    input_ids = torch.full((len(lengths), seq), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(FIRST_REAL_TOKEN, VOCAB_SIZE, (length,), generator=generator)
        attention_mask[row, :length] = 1
    return PaddedBatch(input_ids, attention_mask, tuple(lengths))


def assert_close_to_scale(actual: Tensor, expected: Tensor, rel: float = 1e-5, what: str = "") -> None:
    """``|actual - expected| <= rel * |expected| + rel * max(1, max|expected|)`` elementwise."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale, msg=lambda m: f"{what}\n{m}")


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_word_tokenizer(words: list[str]) -> BertTokenizer:
    """A WordPiece tokenizer whose vocabulary is the BERT special tokens followed by ``words``.

    Transformers 5.x builds it from a ``vocab`` mapping; 4.x only reads a ``vocab.txt`` file.
    """
    tokens = SPECIAL_TOKENS + list(words)
    try:
        return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})
    except TypeError:  # Transformers 4.x: `vocab_file` is required
        with tempfile.TemporaryDirectory() as folder:
            vocab_file = os.path.join(folder, "vocab.txt")
            with open(vocab_file, "w", encoding="utf-8") as handle:
                handle.write("\n".join(tokens) + "\n")
            return BertTokenizer(vocab_file=vocab_file)
