"""Adapters for the post-LN BERT family: BERT, RoBERTa (XLM-RoBERTa, CamemBERT), ELECTRA, DistilBERT."""

from dataclasses import replace

import torch

from .base import Adapter, LayerPaths, dense_head, grouped_layer

#: The ``model_type``s built like RoBERTa (same layout and heads).
ROBERTA_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")
#: RoBERTa-style models number positions from ``padding_idx + 1 = 2``: two position embeddings
#: are never used by a token, so the longest input is ``max_position_embeddings - 2``.
ROBERTA_POSITION_OFFSET = 2

BERT_LAYER = LayerPaths(
    attention="attention.self",
    value="attention.self.value",
    attention_output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    ffn_in="intermediate.dense",
    ffn_activation="intermediate.intermediate_act_fn",
    ffn_out="output.dense",
    ffn_norm="output.LayerNorm",
)

BERT = Adapter(
    name="bert",
    layers="base_model.encoder.layer",
    layer=BERT_LAYER,
    head=dense_head("base_model.pooler.dense", "base_model.pooler.activation", "classifier"),
)
ROBERTA = replace(BERT, name="roberta", head=dense_head("classifier.dense", torch.tanh, "classifier.out_proj"))
ELECTRA = replace(BERT, name="electra", head=dense_head("classifier.dense", "classifier.activation", "classifier.out_proj"))

DISTILBERT = Adapter(
    name="distilbert",
    layers="base_model.transformer.layer",
    layer=grouped_layer(
        ("attention", "v_lin", "out_lin"), ("ffn", "lin1", "activation", "lin2"), ("sa_layer_norm", "output_layer_norm")
    ),
    head=dense_head("pre_classifier", torch.relu, "classifier"),
)
