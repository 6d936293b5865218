"""Each rule of the engine against a slow, literal re-implementation of the spec.

The literal versions loop over rows and pieces and compute in float64 exactly as
``docs/decompx-spec.md`` words them; the engine is fed copies of the same float64 tensors (some
engine functions update their ``pieces`` argument in place to save memory).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import GELUActivation

from captum_decompx.adapters import Adapter
from captum_decompx.adapters.bert_family import BERT_LAYER
from captum_decompx.components import (
    Affine,
    BiasMode,
    LayerParams,
    Settings,
    activation,
    add_bias,
    add_to_own_pieces,
    bias_rule_weights,
    layer_attention_bias,
    mix_heads,
    normalize,
    split_heads,
    token_pieces,
    transformer_layer,
)
from captum_decompx.components.head import head
from captum_decompx.components.norms import NormParams as Norm
from captum_decompx.components.pooling import pool
from captum_decompx.core.capture import LayerRecord
from captum_decompx.core.decomposition import pool_weights

DTYPE = torch.float64
EXACT = dict(rtol=1e-10, atol=1e-12)
RULE_EPS = 1e-12
RULES = ("absdot", "abssim", "norm", "equal", "cls")


def random(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def pieces_with_zero_vectors(batch=2, rows=3, pieces=5, dim=8, seed=0) -> torch.Tensor:
    """Random pieces (batch, rows, pieces, dim) where some pieces are exactly zero vectors,
    including one row whose pieces are all zero."""
    values = random(batch, rows, pieces, dim, seed=seed)
    values[0, 0, 1] = 0.0
    values[0, 2, 0] = 0.0
    values[1, 1, 3] = 0.0
    values[1, 2] = 0.0  # an all-zero row
    return values


# ----------------------------------------------------------------------------------------------
# Literal re-implementations


def literal_score(piece: torch.Tensor, bias: torch.Tensor, rule: str, index: int) -> float:
    """The spec's score ``s[i, k]`` of one piece ``V[i, k]`` for the bias ``b``."""
    dot = sum(float(piece[d]) * float(bias[d]) for d in range(piece.shape[0]))
    piece_norm = math.sqrt(sum(float(x) ** 2 for x in piece))
    bias_norm = math.sqrt(sum(float(x) ** 2 for x in bias))
    if rule == "absdot":
        return abs(dot)
    if rule == "abssim":
        return 0.0 if piece_norm == 0.0 else abs(dot) / (piece_norm * bias_norm)
    if rule == "norm":
        return piece_norm
    if rule == "equal":
        return 1.0 if piece_norm != 0.0 else 0.0
    if rule == "cls":
        return 1.0 if index == 0 else 0.0
    raise AssertionError(rule)


def literal_rule_weights(pieces: torch.Tensor, bias: torch.Tensor, rule: str) -> torch.Tensor:
    """``w[i, k] = s[i, k] / (sum_k' s[i, k'] + 1e-12)``.

    Args:
        pieces: (batch, rows, pieces, dim).
        bias: (dim,) or (batch, rows, dim).
    """
    batch, rows, count, _ = pieces.shape
    weights = torch.zeros(batch, rows, count, dtype=DTYPE)
    for b in range(batch):
        for i in range(rows):
            row_bias = bias if bias.dim() == 1 else bias[b, i]
            scores = [literal_score(pieces[b, i, k], row_bias, rule, k) for k in range(count)]
            total = sum(scores)
            for k in range(count):
                weights[b, i, k] = scores[k] / (total + RULE_EPS)
    return weights


def literal_add_bias(pieces: torch.Tensor, bias: torch.Tensor, rule: str) -> torch.Tensor:
    """``V[i, k] += w[i, k] * b``."""
    weights = literal_rule_weights(pieces, bias, rule)
    out = pieces.clone()
    batch, rows, count, _ = pieces.shape
    for b in range(batch):
        for i in range(rows):
            row_bias = bias if bias.dim() == 1 else bias[b, i]
            for k in range(count):
                out[b, i, k] = pieces[b, i, k] + weights[b, i, k] * row_bias
    return out


def literal_layer_norm(pieces, norm_input, gamma, beta, eps, rule) -> torch.Tensor:
    """``L[i, k] = gamma * (R[i, k] - mean_d R[i, k]) / s_i`` with ``s_i`` from the real input,
    then ``beta`` spread over the pieces with weights from ``L``."""
    batch, rows, count, dim = pieces.shape
    out = torch.zeros_like(pieces)
    for b in range(batch):
        for i in range(rows):
            u = [float(x) for x in norm_input[b, i]]
            mean_u = sum(u) / dim
            variance = sum((x - mean_u) ** 2 for x in u) / dim  # biased
            scale = math.sqrt(variance + eps)
            for k in range(count):
                piece = pieces[b, i, k]
                centred = piece - piece.mean()
                out[b, i, k] = centred / scale if gamma is None else gamma * centred / scale
    if beta is not None:
        out = literal_add_bias(out, beta, rule)
    return out


def gelu_derivative(a: torch.Tensor) -> torch.Tensor:
    """d/da of the exact GELU ``a * Phi(a)``: ``Phi(a) + a * phi(a)``."""
    cdf = 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    return cdf + a * pdf


def tanh_derivative(a: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.tanh(a) ** 2


ACTIVATIONS = {
    # name -> (function handed to the engine, the same function for the literal version, its derivative)
    "gelu": (F.gelu, F.gelu, gelu_derivative),
    "gelu-module": (GELUActivation(), F.gelu, gelu_derivative),
    "tanh": (torch.tanh, torch.tanh, tanh_derivative),
}


def literal_activation(pieces, pre_activation, function, derivative, approximation, rule):
    """Per element of the real pre-activation ``a`` (batch, rows, dim):
    zo: ``Q = f(a) / (a + 1e-12) * P``; relu: ``Q = P * (a > 0)``;
    la: ``Q = f'(a) * P``, then the intercept ``f(a) - f'(a) a`` spread with weights from ``Q``."""
    batch, rows, count, dim = pieces.shape
    out = torch.zeros_like(pieces)
    intercept = torch.zeros(batch, rows, dim, dtype=DTYPE)
    for b in range(batch):
        for i in range(rows):
            a = pre_activation[b, i]
            if approximation == "zo":
                coefficient = function(a) / (a + 1e-12)
            elif approximation == "relu":
                coefficient = (a > 0).to(DTYPE)
            else:
                coefficient = derivative(a)
                intercept[b, i] = function(a) - coefficient * a
            for k in range(count):
                out[b, i, k] = coefficient * pieces[b, i, k]
    if approximation == "la":
        out = literal_add_bias(out, intercept, rule)
    return out


# ----------------------------------------------------------------------------------------------
# Bias rules


@pytest.mark.parametrize("rule", RULES)
def test_bias_rule_weights_shared_bias(rule):
    pieces = pieces_with_zero_vectors()
    bias = random(8, seed=1)
    expected = literal_rule_weights(pieces, bias, rule)
    torch.testing.assert_close(bias_rule_weights(pieces, bias, rule), expected, **EXACT)


@pytest.mark.parametrize("rule", RULES)
def test_bias_rule_weights_per_row_bias(rule):
    pieces = pieces_with_zero_vectors(seed=2)
    bias = random(2, 3, 8, seed=3)
    expected = literal_rule_weights(pieces, bias, rule)
    actual = bias_rule_weights(pieces, bias.unsqueeze(-2), rule)
    torch.testing.assert_close(actual, expected, **EXACT)


@pytest.mark.parametrize("rule", ("abssim", "equal"))
def test_zero_vectors_get_no_share(rule):
    pieces = pieces_with_zero_vectors()
    weights = bias_rule_weights(pieces, random(8, seed=1), rule)
    assert weights[0, 0, 1] == 0 and weights[0, 2, 0] == 0 and weights[1, 1, 3] == 0
    assert torch.all(weights[1, 2] == 0)  # an all-zero row: nothing to spread over
    # every other row shares the whole bias
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, dtype=DTYPE), rtol=0, atol=1e-10)


def test_cls_rule_gives_everything_to_the_first_piece():
    weights = bias_rule_weights(random(2, 3, 5, 8), random(8, seed=1), "cls")
    expected = torch.zeros(2, 3, 5, dtype=DTYPE)
    expected[..., 0] = 1.0
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-11)


def test_unknown_bias_rule_raises():
    with pytest.raises(ValueError, match="absdot"):
        bias_rule_weights(random(1, 1, 2, 3), random(3), "dot")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bias_shape", ["shared", "per-row"])
def test_add_bias_rule_mode(rule, bias_shape):
    pieces = random(2, 3, 5, 8, seed=4)
    bias = random(8, seed=5) if bias_shape == "shared" else random(2, 3, 8, seed=5)
    actual = add_bias(pieces.clone(), bias, Settings(bias_mode=BiasMode.RULE, bias_rule=rule))
    torch.testing.assert_close(actual, literal_add_bias(pieces, bias, rule), **EXACT)
    # the pieces now sum to the old sum plus the whole bias
    torch.testing.assert_close(actual.sum(2), pieces.sum(2) + bias, rtol=1e-10, atol=1e-10)


def test_add_bias_piece_mode_adds_to_the_trailing_piece_only():
    pieces = random(2, 3, 5, 8, seed=4)
    bias = random(8, seed=5)
    actual = add_bias(pieces.clone(), bias, Settings(bias_mode=BiasMode.PIECE))
    expected = pieces.clone()
    for b in range(2):
        for i in range(3):
            expected[b, i, 4] = pieces[b, i, 4] + bias
    torch.testing.assert_close(actual, expected, **EXACT)
    torch.testing.assert_close(token_pieces(actual, Settings(bias_mode=BiasMode.PIECE)), pieces[:, :, :4])


def test_add_bias_drop_mode_leaves_pieces_unchanged():
    pieces = random(2, 3, 5, 8, seed=4)
    actual = add_bias(pieces.clone(), random(8, seed=5), Settings(bias_mode=BiasMode.DROP))
    assert torch.equal(actual, pieces)


# ----------------------------------------------------------------------------------------------
# LayerNorm


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("affine", ["affine", "no-affine"])
def test_layer_norm_matches_literal(rule, affine):
    pieces = random(2, 3, 4, 8, seed=6)
    norm_input = 2.0 * random(2, 3, 8, seed=7) + 0.5
    gamma = 1.0 + 0.3 * random(8, seed=8) if affine == "affine" else None
    beta = 0.5 * random(8, seed=9) if affine == "affine" else None
    eps = 1e-5
    actual = normalize(pieces.clone(), norm_input, Norm(gamma, beta, eps), Settings(bias_rule=rule))
    expected = literal_layer_norm(pieces, norm_input, gamma, beta, eps, rule)
    torch.testing.assert_close(actual, expected, **EXACT)


@pytest.mark.parametrize("rule", RULES)
def test_layer_norm_pieces_sum_to_the_real_layer_norm(rule):
    pieces = random(2, 3, 4, 8, seed=10)
    real_input = pieces.sum(2)  # the captured input is what the pieces decompose
    gamma, beta = 1.0 + 0.3 * random(8, seed=11), 0.5 * random(8, seed=12)
    actual = normalize(pieces.clone(), real_input, Norm(gamma, beta, 1e-12), Settings(bias_rule=rule))
    torch.testing.assert_close(actual.sum(2), F.layer_norm(real_input, (8,), gamma, beta, 1e-12), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Activations


@pytest.mark.parametrize("rule", ("absdot", "norm", "abssim"))
@pytest.mark.parametrize("approximation", ("zo", "la", "relu"))
@pytest.mark.parametrize("function_name", list(ACTIVATIONS))
def test_activation_matches_literal(function_name, approximation, rule):
    engine_function, literal_function, derivative = ACTIVATIONS[function_name]
    pieces = random(2, 3, 4, 6, seed=13)
    pre_activation = 1.5 * random(2, 3, 6, seed=14)
    actual = activation(pieces.clone(), pre_activation, engine_function, approximation, Settings(bias_rule=rule))
    expected = literal_activation(pieces, pre_activation, literal_function, derivative, approximation, rule)
    torch.testing.assert_close(actual, expected, **EXACT)


@pytest.mark.parametrize("function_name", list(ACTIVATIONS))
def test_la_slope_is_the_true_derivative(function_name):
    engine_function, _, derivative = ACTIVATIONS[function_name]
    pre_activation = 2.0 * random(1, 2, 7, seed=15)
    ones = torch.ones(1, 2, 1, 7, dtype=DTYPE)  # a single piece of ones: Q == slope
    drop = Settings(bias_mode=BiasMode.DROP)  # leave the intercept out
    slope = activation(ones, pre_activation, engine_function, "la", drop).squeeze(2)
    torch.testing.assert_close(slope, derivative(pre_activation), rtol=1e-10, atol=1e-12)
    # and a central finite difference of the function agrees
    step = 1e-6
    finite = (engine_function(pre_activation + step) - engine_function(pre_activation - step)) / (2 * step)
    torch.testing.assert_close(slope, finite, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("approximation", ("zo", "la"))
@pytest.mark.parametrize("function_name", list(ACTIVATIONS))
def test_activation_pieces_sum_to_f_of_a(function_name, approximation, rule):
    """When the pieces sum to ``a``, the activated pieces (with the intercept's share) sum to f(a)."""
    engine_function, literal_function, _ = ACTIVATIONS[function_name]
    pieces = random(2, 3, 4, 6, seed=16)
    pre_activation = pieces.sum(2)
    actual = activation(pieces.clone(), pre_activation, engine_function, approximation, Settings(bias_rule=rule))
    torch.testing.assert_close(actual.sum(2), literal_function(pre_activation), rtol=1e-9, atol=1e-9)


def test_unknown_approximation_raises():
    with pytest.raises(ValueError):
        activation(random(1, 1, 2, 3), random(1, 1, 3), torch.tanh, "linear", Settings())


# ----------------------------------------------------------------------------------------------
# Attention mixing


def literal_mixing(probs: torch.Tensor, values: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``out[i, k, head h] = sum_j alpha[h, i, j] * values[j, k, value head of h]``.

    Query head ``h`` reads value head ``h // (heads // kv_heads)`` (the same head when
    ``kv_heads == heads``).

    Args:
        probs: (batch, heads, rows, seq).
        values: (batch, seq, pieces, kv_heads*head_dim).
    """
    batch, heads, rows, seq = probs.shape
    pieces, kv_width = values.shape[2], values.shape[3]
    head_dim = kv_width // kv_heads
    group = heads // kv_heads
    out = torch.zeros(batch, rows, pieces, heads * head_dim, dtype=DTYPE)
    for b in range(batch):
        for h in range(heads):
            source = slice((h // group) * head_dim, (h // group + 1) * head_dim)
            target = slice(h * head_dim, (h + 1) * head_dim)
            for i in range(rows):
                for k in range(pieces):
                    total = torch.zeros(head_dim, dtype=DTYPE)
                    for j in range(seq):
                        total = total + probs[b, h, i, j] * values[b, j, k, source]
                    out[b, i, k, target] = total
    return out


HEADS, HEAD_DIM = 4, 3


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["one-value-head-per-head", "grouped-2", "grouped-1"])
@pytest.mark.parametrize("rows", ["all-rows", "first-row", "middle-rows"])
def test_attention_mixing_matches_per_head_loop(rows, kv_heads):
    batch, seq, pieces = 2, 5, 6
    values = random(batch, seq, pieces, kv_heads * HEAD_DIM, seed=17)
    probs = torch.softmax(random(batch, HEADS, seq, seq, seed=18), dim=-1)
    selected = {"all-rows": slice(None), "first-row": slice(0, 1), "middle-rows": slice(1, 4)}[rows]
    probs = probs[:, :, selected]
    actual = mix_heads(probs, split_heads(values, kv_heads), pieces)
    torch.testing.assert_close(actual, literal_mixing(probs, values, kv_heads), **EXACT)


def test_add_to_own_pieces_adds_the_bias_on_the_diagonal():
    values = random(2, 4, 4, 6, seed=19)
    bias = random(6, seed=20)
    actual = add_to_own_pieces(values, bias, None)
    expected = values.clone()
    for b in range(2):
        for j in range(4):
            expected[b, j, j] = values[b, j, j] + bias
    torch.testing.assert_close(actual, expected, **EXACT)


# ----------------------------------------------------------------------------------------------
# One whole post-LN layer, literally as the spec's steps 1-5


def _layer_params(dim: int, ffn: int, heads: int, seed: int) -> LayerParams:
    def affine(out_dim, in_dim, s):
        return Affine(0.4 * random(out_dim, in_dim, seed=s), 0.3 * random(out_dim, seed=s + 1))

    def norm(s):
        return Norm(1.0 + 0.3 * random(dim, seed=s), 0.3 * random(dim, seed=s + 1), 1e-12)

    return LayerParams(
        value=affine(dim, dim, seed),
        attention_output=affine(dim, dim, seed + 2),
        attention_norm=norm(seed + 4),
        ffn_in=affine(ffn, dim, seed + 6),
        ffn_activation=F.gelu,
        ffn_out=affine(dim, ffn, seed + 8),
        ffn_norm=norm(seed + 10),
    )


def literal_layer(pieces, record: LayerRecord, params: LayerParams, rule: str, first: bool) -> torch.Tensor:
    """Steps 1-5 of the spec with every bias spread by ``rule``.

    Args:
        pieces: (batch, seq, seq, dim), one piece per input token.
    """
    batch, seq, count, dim = pieces.shape
    heads = record.attention_probs.shape[1]
    head_dim = dim // heads
    w_v, b_v = params.value.weight, params.value.bias
    w_o, b_o = params.attention_output.weight, params.attention_output.bias
    # value vectors of every piece; in the first layer a token's own piece carries the value bias
    values = pieces @ w_v.T
    if first:
        for b in range(batch):
            for j in range(seq):
                values[b, j, j] = values[b, j, j] + b_v
    # 1. attention: Z[i, k] = sum_h sum_j alpha[h, i, j] * (V[j, k] restricted to head h) @ W_O^h
    mixed = torch.zeros(batch, seq, count, dim, dtype=DTYPE)
    for b in range(batch):
        for i in range(seq):
            for k in range(count):
                total = torch.zeros(dim, dtype=DTYPE)
                for h in range(heads):
                    block = slice(h * head_dim, (h + 1) * head_dim)
                    for j in range(seq):
                        total = total + record.attention_probs[b, h, i, j] * (values[b, j, k, block] @ w_o[:, block].T)
                mixed[b, i, k] = total
    # 2. residual, then the attention bias
    attention_bias = b_o if first else w_o @ b_v + b_o
    residual = literal_add_bias(mixed + pieces, attention_bias, rule)
    # 3. LayerNorm 1
    norm1 = params.attention_norm
    normed = literal_layer_norm(residual, record.attention_norm_input, norm1.weight, norm1.bias, norm1.eps, rule)
    # 4. feed-forward (ZO)
    hidden = literal_add_bias(normed @ params.ffn_in.weight.T, params.ffn_in.bias, rule)
    activated = literal_activation(hidden, record.ffn_pre_activation, F.gelu, gelu_derivative, "zo", rule)
    ffn_out = literal_add_bias(activated @ params.ffn_out.weight.T, params.ffn_out.bias, rule)
    # 5. residual and LayerNorm 2
    norm2 = params.ffn_norm
    return literal_layer_norm(normed + ffn_out, record.ffn_norm_input, norm2.weight, norm2.bias, norm2.eps, rule)


@pytest.mark.parametrize("first", [True, False], ids=["first-layer", "later-layer"])
@pytest.mark.parametrize("rule", ("absdot", "norm"))
def test_post_ln_layer_matches_literal_spec(rule, first):
    batch, seq, dim, heads, ffn = 1, 4, 8, 2, 12
    params = _layer_params(dim, ffn, heads, seed=30)
    hidden = random(batch, seq, dim, seed=21)
    pieces = torch.zeros(batch, seq, seq, dim, dtype=DTYPE)
    for j in range(seq):
        pieces[0, j, j] = hidden[0, j]
    # captured statistics: any values will do for the comparison
    record = LayerRecord(
        attention_probs=torch.softmax(random(batch, heads, seq, seq, seed=22), dim=-1),
        attention_norm_input=random(batch, seq, dim, seed=23),
        ffn_pre_activation=random(batch, seq, ffn, seed=24),
        ffn_norm_input=random(batch, seq, dim, seed=25),
    )
    actual = transformer_layer(
        pieces.clone(), record, params, Settings(bias_rule=rule), first=first, row_chunks=[slice(0, 2), slice(2, 4)]
    )
    torch.testing.assert_close(actual, literal_layer(pieces, record, params, rule, first), rtol=1e-9, atol=1e-10)


def test_layer_attention_bias():
    params = _layer_params(8, 12, 2, seed=40)
    torch.testing.assert_close(layer_attention_bias(params, first=True, heads=2), params.attention_output.bias)
    expected = params.attention_output.weight @ params.value.bias + params.attention_output.bias
    torch.testing.assert_close(layer_attention_bias(params, first=False, heads=2), expected, **EXACT)


# ----------------------------------------------------------------------------------------------
# Pooling and the head


def test_pool_is_a_weighted_selection_of_rows():
    pieces = random(2, 5, 4, 6, seed=26)
    weights = random(2, 5, seed=27)
    expected = torch.zeros(2, 4, 6, dtype=DTYPE)
    for b in range(2):
        for k in range(4):
            for r in range(5):
                expected[b, k] += weights[b, r] * pieces[b, r, k]
    torch.testing.assert_close(pool(pieces, weights), expected, **EXACT)


@pytest.mark.parametrize("pooling", ["first", "last", "mean"])
def test_pool_weights(pooling):
    real_tokens = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]])
    adapter = Adapter(name="test", layers="encoder.layer", layer=BERT_LAYER, pooling=pooling)
    expected = torch.zeros(2, 5, dtype=DTYPE)
    for b in range(2):
        length = int(real_tokens[b].sum())
        if pooling == "first":
            expected[b, 0] = 1.0
        elif pooling == "last":
            expected[b, length - 1] = 1.0
        else:
            expected[b, :length] = 1.0 / length
    torch.testing.assert_close(pool_weights(adapter, real_tokens, DTYPE), expected, **EXACT)


@pytest.mark.parametrize("approximation", ["zo", "la"])
@pytest.mark.parametrize("rule", ("absdot", "equal"))
def test_head_matches_literal(rule, approximation):
    """dense -> tanh -> out projection, each step by the literal rules."""
    pooled = random(2, 5, 6, seed=28)
    dense = Affine(0.5 * random(6, 6, seed=29), 0.3 * random(6, seed=30))
    out_proj = Affine(0.5 * random(3, 6, seed=31), 0.3 * random(3, seed=32))
    pre_activation = pooled.sum(1) @ dense.weight.T + dense.bias
    actual = head(
        pooled.clone(),
        [dense, torch.tanh, out_proj],
        [None, pre_activation, None],
        Settings(bias_rule=rule, head_approximation=approximation),
    )

    pieces = pooled.unsqueeze(1)  # (batch, 1 row, pieces, dim)
    pieces = literal_add_bias(pieces @ dense.weight.T, dense.bias, rule)
    pieces = literal_activation(pieces, pre_activation.unsqueeze(1), torch.tanh, tanh_derivative, approximation, rule)
    pieces = literal_add_bias(pieces @ out_proj.weight.T, out_proj.bias, rule)
    torch.testing.assert_close(actual, pieces.squeeze(1), **EXACT)
    # completeness: the pieces sum to the real head's output
    real = torch.tanh(pre_activation) @ out_proj.weight.T + out_proj.bias
    torch.testing.assert_close(actual.sum(1), real, rtol=1e-9, atol=1e-9)
