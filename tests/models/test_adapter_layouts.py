"""The layer layouts the adapters build with ``grouped_layer``, checked path by path against the
architectures' module names written out in full."""

from __future__ import annotations

import pytest
from torch import nn

from captum_decompx.adapters import LayerPaths, Windows, grouped_layer
from captum_decompx.adapters.albert import ALBERT
from captum_decompx.adapters.bert_family import DISTILBERT
from captum_decompx.adapters.decoders import GEMMA2_LAYER, GPT2_LAYER, LLAMA_LAYER
from captum_decompx.adapters.vision import _DINOV2_SWIGLU_LAYER_4X, _SWIN_LAYER_4X, _VIT_LAYER

WRITTEN_OUT = {
    "gpt2": (
        GPT2_LAYER,
        LayerPaths("attn", "attn.c_attn[2/3]", "attn.c_proj", "ln_1", "mlp.c_fc", "mlp.act", "mlp.c_proj", "ln_2"),
    ),
    "llama": (
        LLAMA_LAYER,
        LayerPaths(
            "self_attn", "self_attn.v_proj", "self_attn.o_proj", "input_layernorm", "mlp.up_proj", "mlp.act_fn",
            "mlp.down_proj", "post_attention_layernorm", ffn_gate="mlp.gate_proj",
        ),
    ),
    "gemma2": (
        GEMMA2_LAYER,
        LayerPaths(
            "self_attn", "self_attn.v_proj", "self_attn.o_proj", "input_layernorm", "mlp.up_proj", "mlp.act_fn",
            "mlp.down_proj", "pre_feedforward_layernorm", ffn_gate="mlp.gate_proj",
            attention_output_norm="post_attention_layernorm", ffn_output_norm="post_feedforward_layernorm",
        ),
    ),
    "distilbert": (
        DISTILBERT.layer,
        LayerPaths(
            "attention", "attention.v_lin", "attention.out_lin", "sa_layer_norm", "ffn.lin1", "ffn.activation",
            "ffn.lin2", "output_layer_norm",
        ),
    ),
    "albert": (  # the feed-forward maps sit in the layer itself
        ALBERT.layer,
        LayerPaths(
            "attention", "attention.value", "attention.dense", "attention.LayerNorm", "ffn", "activation",
            "ffn_output", "full_layer_layer_norm",
        ),
    ),
    "vit": (
        _VIT_LAYER,
        LayerPaths(
            "attention", "attention.v_proj", "attention.o_proj", "layernorm_before", "mlp.fc1",
            "mlp.activation_fn", "mlp.fc2", "layernorm_after",
        ),
    ),
    "dinov2-swiglu-4x": (  # transformers 4.x: gate and up-projection are the halves of weights_in
        _DINOV2_SWIGLU_LAYER_4X,
        LayerPaths(
            "attention.attention", "attention.attention.value", "attention.output.dense", "norm1",
            "mlp.weights_in[1/2]", nn.functional.silu, "mlp.weights_out", "norm2", ffn_gate="mlp.weights_in[0/2]",
            attention_scale="layer_scale1.lambda1", ffn_scale="layer_scale2.lambda1",
        ),
    ),
    "swin-4x": (
        _SWIN_LAYER_4X,
        LayerPaths(
            "attention.self", "attention.self.value", "attention.output.dense", "layernorm_before",
            "intermediate.dense", "intermediate.intermediate_act_fn", "output.dense", "layernorm_after",
            attention_windows=Windows(),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(WRITTEN_OUT))
def test_grouped_layouts_name_the_same_modules_as_written_out(name):
    built, written = WRITTEN_OUT[name]
    assert built == written


def test_grouped_layer_prefixes_the_gate_and_a_block_suffix():
    paths = grouped_layer(("attn", "Wqkv[2/3]", "Wo"), ("mlp", "Wi[1/2]", "act", "Wo"), ("attn_norm", "mlp_norm"), gate="Wi[0/2]")
    assert (paths.value, paths.ffn_in, paths.ffn_gate, paths.ffn_out) == ("attn.Wqkv[2/3]", "mlp.Wi[1/2]", "mlp.Wi[0/2]", "mlp.Wo")
    assert paths.attention_output_norm is None and paths.ffn_output_norm is None
