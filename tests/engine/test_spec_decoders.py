"""Llama-style decoders against the literal spec: pre-RMSNorm, a gated feed-forward unit
(SwiGLU), rotary positions and grouped-query attention, with and without biases, on the exact
and the fast path.

RMSNorm: ``L[i, k] = gamma * X[i, k] / s_i`` with ``s_i = sqrt(mean(u_i^2) + eps)`` of the real
input (no centring). Gated unit ``act(g) * u``: the real ``act(g)`` scales the decomposed ``u``.
Grouped-query attention: query head ``h`` mixes the values of key-value head
``h // (heads // kv_heads)``, so a later layer's value bias reaches the output through every
query head of its group. The literal version (``literal_spec.py``) recomputes the forward pass
from the weights in float64; the engine is reached through ``DecompX`` only.
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
from support.literal_models import LLAMA_LENGTHS, VOCAB, llama, llama_weights

from captum_decompx import DecompX


@pytest.mark.parametrize("biases", [False, True], ids=["llama-no-biases", "llama-attention-and-mlp-biases"])
@pytest.mark.parametrize(
    "include_biases, method",
    [(True, "exact"), (False, "exact"), (False, "fast")],
    ids=["biases-decomposed", "biases-left-out-exact", "biases-left-out-fast"],
)
def test_llama_gqa_rmsnorm_gated_ffn_matches_the_literal_spec(biases, include_biases, method):
    model = llama(seed=6, biases=biases)
    ids, mask = spec.padded_tokens(LLAMA_LENGTHS, VOCAB, seed=6)
    out = DecompX(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model, include_biases=include_biases, algorithm=method
    ).decompose(ids, (mask,))
    weights = llama_weights(model)
    scale = float(out.logits.abs().max())
    for b, n in enumerate(LLAMA_LENGTHS):
        embeddings = model.model.embed_tokens.weight[ids[b, :n]].detach()
        trace = spec.real_forward(weights, embeddings, pooled_row=n - 1)  # the last real token
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        literal = spec.decompose(weights, embeddings, trace, n - 1, mode="rule" if include_biases else "drop")
        expected = torch.zeros_like(out.attributions[b])
        expected[:n] = literal.contributions
        spec.assert_matches(out.attributions[b], expected, scale, f"example {b}: attributions")
        if include_biases:
            # complete up to the float32 rounding of the real RMSNorm (the decomposition uses the
            # float64 statistics of its real input)
            spec.assert_matches(literal.contributions.sum(0), trace.logits, scale, "literal completeness", 1e-6)
        else:
            spec.assert_matches(out.bias[b], trace.logits - literal.contributions.sum(0), scale, f"example {b}: bias share")
