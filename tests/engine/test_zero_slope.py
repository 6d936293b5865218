"""The zero-origin slope where a pre-activation is exactly 0: its limit ``f'(0)``, on both paths.

``theta = f(a) / (a + 1e-12)`` is 0 at ``a == 0`` and about ``f'(0)`` at the rounding residuals
next to it, so a unit whose pre-activation rounds to exactly 0 on one path and not on the other
(eager and sdpa attention, other padded shapes) was frozen at two different slopes. At ``a == 0``
any slope keeps the sum; the limit is the one that does not jump. ReLU's limit differs from the
left and the right: its slope at 0 is the left limit, 0 (autograd's derivative there, and the
``"relu"`` approximation's ``a > 0``).

Checked for the value: by hand for every activation of ``transformers.activations.ACT2FN`` with
``f(0) = 0``, and on models with exact zeros (a unit whose pre-activation crosses 0 exactly with
non-zero pieces, a pruned neuron, the pooler's tanh) against the literal spec (``literal_spec.py``)
frozen at the model's real pre-activations.
"""

from __future__ import annotations

import math

import literal_spec as spec
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.literal_models import LLAMA_LENGTHS, bert_embeddings, bert_weights, llama, llama_weights
from support.literal_models import VOCAB as LLAMA_VOCAB
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import BertConfig, BertForSequenceClassification
from transformers.activations import ACT2FN

from captum_decompx import DecompX
from captum_decompx.components.activations import ZERO_ORIGIN_EPS, activation, frozen_activation
from captum_decompx.components.pieces import Settings

# f'(0), by hand; the ReLU family takes its left limit
SLOPES_AT_ZERO = {
    "gelu": 0.5,
    "gelu_new": 0.5,
    "gelu_fast": 0.5,
    "gelu_pytorch_tanh": 0.5,
    "gelu_python": 0.5,
    "gelu_accurate": 0.5,
    "quick_gelu": 0.5,
    "silu": 0.5,
    "swish": 0.5,
    "hardswish": 0.5,
    "mish": math.tanh(math.log(2.0)),
    "tanh": 1.0,
    "linear": 1.0,
    "relu": 0.0,
    "relu6": 0.0,
    "relu2": 0.0,
    "leaky_relu": 0.01,
}
PRE_ACTIVATION = torch.tensor([[[0.0, -0.0, 0.3, -1.2, 2.5e-8, -7.0]]], dtype=torch.float64)  # (batch, rows, dim)
ZEROS = PRE_ACTIVATION == 0


def expected_slope(function, name: str) -> torch.Tensor:
    """(1, 1, dim): ``f(a) / (a + 1e-12)``, with the hand-written ``f'(0)`` where ``a == 0``."""
    theta = function(PRE_ACTIVATION) / (PRE_ACTIVATION + ZERO_ORIGIN_EPS)
    return torch.where(ZEROS, torch.tensor(SLOPES_AT_ZERO[name], dtype=torch.float64), theta)


def activation_named(name: str):
    """``ACT2FN[name]``; skipped where this transformers version has no such activation."""
    if name not in ACT2FN:
        pytest.skip(f"this transformers version has no {name!r} activation")
    return ACT2FN[name]


@pytest.mark.parametrize("name", sorted(SLOPES_AT_ZERO))
def test_exact_path_slope_at_zero_is_the_limit(name):
    function = activation_named(name)
    pieces = torch.tensor([1.5, -1.5, 0.25]).reshape(1, 1, 3, 1) * torch.ones(1, 1, 3, PRE_ACTIVATION.shape[-1])
    out = activation(pieces.double(), PRE_ACTIVATION, function, "zo", Settings())
    expected = pieces.double() * expected_slope(function, name).unsqueeze(-2)
    assert torch.allclose(out[..., ZEROS[0, 0]], expected[..., ZEROS[0, 0]], rtol=1e-6, atol=0), (name, out[0, 0, :, :2])
    # nonzero pre-activations keep the paper's formula, to the bit
    assert torch.equal(out[..., ~ZEROS[0, 0]], expected[..., ~ZEROS[0, 0]])


@pytest.mark.parametrize("name", sorted(SLOPES_AT_ZERO))
def test_fast_path_slope_at_zero_is_the_limit(name):
    function = activation_named(name)
    a = PRE_ACTIVATION.clone().requires_grad_(True)
    frozen, dropped = frozen_activation("zo", function, a, function(a).detach())
    assert dropped is None
    assert torch.equal(frozen.detach(), function(PRE_ACTIVATION))
    (slope,) = torch.autograd.grad(frozen.sum(), a)
    expected = expected_slope(function, name)
    assert torch.allclose(slope[ZEROS], expected[ZEROS], rtol=1e-6, atol=0), (name, slope)
    assert torch.equal(slope[~ZEROS], expected[~ZEROS])


def test_head_tanh_slope_at_zero_is_one():
    pieces = torch.tensor([2.0, -2.0]).reshape(1, 1, 2, 1).double()
    out = activation(pieces, torch.zeros(1, 1, 1, dtype=torch.float64), torch.tanh, "zo", Settings())
    assert torch.equal(out, pieces)


# ----------------------------------------------------------------------------------------------
# Models with exact zeros, against the literal spec

LENGTHS = (7, 5, 3)
VOCAB = 50
CROSSING_UNIT, CROSSING_ROW, PRUNED_UNIT, POOLER_UNIT, COLUMN = 3, 2, 5, 1, 4


def _inputs_of(module: torch.nn.Module, run) -> torch.Tensor:
    seen = []
    handle = module.register_forward_hook(lambda _m, args, output: seen.append((args[0].detach(), output.detach())))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def _cross_zero_at(linear: torch.nn.Module, unit: int, real_input: torch.Tensor, column: int = COLUMN) -> None:
    """Make ``unit`` of ``linear`` read only ``column`` of its input, times 0.5 (exact in binary),
    and cancel it at ``real_input`` (the input row where the unit's output must be exactly 0)."""
    with torch.no_grad():
        linear.weight[unit] = 0.0
        linear.weight[unit, column] = 0.5
        linear.bias[unit] = -0.5 * real_input[column]


def bert_with_exact_zeros(hidden_act: str, seed: int):
    """A float64 BERT (eager attention) whose layer-0 unit ``CROSSING_UNIT`` is exactly 0 at row
    ``CROSSING_ROW`` of example 0 (its pieces are not), whose layer-1 unit ``PRUNED_UNIT`` is pruned
    (weight row and bias zeroed), and whose pooler unit ``POOLER_UNIT`` is exactly 0 for example 0."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
        hidden_act=hidden_act,
        attn_implementation="eager",
    )
    model = spec.randomize(BertForSequenceClassification(config), seed)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=seed)

    def run():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    layers = model.bert.encoder.layer
    ffn_input, _ = _inputs_of(layers[0].intermediate.dense, run)
    _cross_zero_at(layers[0].intermediate.dense, CROSSING_UNIT, ffn_input[0, CROSSING_ROW])
    with torch.no_grad():
        layers[1].intermediate.dense.weight[PRUNED_UNIT] = 0.0
        layers[1].intermediate.dense.bias[PRUNED_UNIT] = 0.0
    pooler_input, _ = _inputs_of(model.bert.pooler.dense, run)
    _cross_zero_at(model.bert.pooler.dense, POOLER_UNIT, pooler_input[0])
    return model, ids, mask


def real_pre_activations(model, ids, mask) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer the real input of the activation (batch, seq, ffn), and the pooler's (batch, d)."""
    seen: dict = {}
    modules = [layer.intermediate.dense for layer in model.bert.encoder.layer] + [model.bert.pooler.dense]
    handles = [
        module.register_forward_hook(lambda _m, _a, output, index=index: seen.__setitem__(index, output.detach()))
        for index, module in enumerate(modules)
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[index] for index in range(len(modules) - 1)], seen[len(modules) - 1]


def literal_at_real_pre_activations(model, ids, mask, literal_activation, **options):
    """The literal decomposition of each example, frozen at the model's own pre-activations (so
    that its exact zeros are the model's)."""
    weights = bert_weights(model)
    for layer in weights.layers:
        layer.activation = literal_activation
    ffn, pooler = real_pre_activations(model, ids, mask)
    assert float(ffn[0][0, CROSSING_ROW, CROSSING_UNIT]) == 0.0 and float(ffn[0][:, :, CROSSING_UNIT].abs().max()) > 0
    assert bool((ffn[1][:, :, PRUNED_UNIT] == 0).all()) and float(pooler[0, POOLER_UNIT]) == 0.0
    results = []
    for b, n in enumerate(LENGTHS):
        embeddings = bert_embeddings(model, ids[b, :n])
        trace = spec.real_forward(weights, embeddings, pooled_row=0)
        for layer_trace, real in zip(trace.layers, ffn):
            assert torch.allclose(layer_trace.pre_activation, real[b, :n], rtol=0, atol=1e-12)
            layer_trace.pre_activation = real[b, :n].to(spec.DTYPE)
        trace.head_inputs[1] = pooler[b].to(spec.DTYPE)
        results.append((trace, spec.decompose(weights, embeddings, trace, 0, **options)))
    return results


@pytest.mark.parametrize("hidden_act, literal_activation", [("gelu", spec.GELU), ("relu", spec.RELU)], ids=["gelu", "relu"])
@pytest.mark.parametrize(
    "include_biases, method", [(True, "exact"), (False, "exact"), (False, "fast")], ids=["biases", "exact", "fast"]
)
def test_exact_zeros_and_a_pruned_neuron_match_the_literal_spec(hidden_act, literal_activation, include_biases, method):
    model, ids, mask = bert_with_exact_zeros(hidden_act, seed=11)
    out = DecompX(model, include_biases=include_biases, algorithm=method).decompose(ids, (mask,))
    literal = literal_at_real_pre_activations(model, ids, mask, literal_activation, mode="rule" if include_biases else "drop")
    scale = float(out.logits.abs().max())
    for b, (trace, decomposition) in enumerate(literal):
        n = LENGTHS[b]
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        expected = torch.zeros_like(out.attributions[b])
        expected[:n] = decomposition.contributions
        spec.assert_matches(out.attributions[b], expected, scale, f"example {b}: attributions")
        if include_biases:
            spec.assert_matches(decomposition.contributions.sum(0), trace.logits, scale, "literal completeness", 1e-9)
        else:
            spec.assert_matches(out.bias[b], trace.logits - decomposition.contributions.sum(0), scale, f"example {b}: bias")


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_llama_pruned_gated_neurons_match_the_literal_spec(method):
    """A gated unit (SwiGLU) with pruned neurons: layer 0's gate row zeroed, layer 1's gate and up
    rows zeroed; the real gate ``silu(0) = 0`` scales the decomposed up-projection."""
    model = llama(seed=6, biases=True)
    with torch.no_grad():
        mlp0, mlp1 = model.model.layers[0].mlp, model.model.layers[1].mlp
        for linear in (mlp0.gate_proj, mlp1.gate_proj, mlp1.up_proj):
            linear.weight[PRUNED_UNIT] = 0.0
            linear.bias[PRUNED_UNIT] = 0.0
    ids, mask = spec.padded_tokens(LLAMA_LENGTHS, LLAMA_VOCAB, seed=6)
    out = DecompX(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model, include_biases=False, algorithm=method
    ).decompose(ids, (mask,))
    weights = llama_weights(model)
    scale = float(out.logits.abs().max())
    for b, n in enumerate(LLAMA_LENGTHS):
        embeddings = model.model.embed_tokens.weight[ids[b, :n]].detach()
        trace = spec.real_forward(weights, embeddings, pooled_row=n - 1)
        assert all(bool((layer.pre_activation[:, PRUNED_UNIT] == 0).all()) for layer in trace.layers)
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        literal = spec.decompose(weights, embeddings, trace, n - 1, mode="drop")
        expected = torch.zeros_like(out.attributions[b])
        expected[:n] = literal.contributions
        spec.assert_matches(out.attributions[b], expected, scale, f"example {b}: attributions")
        spec.assert_matches(out.bias[b], trace.logits - literal.contributions.sum(0), scale, f"example {b}: bias share")


# ----------------------------------------------------------------------------------------------
# Every attention kernel: fast = exact without biases, with a unit that crosses 0 exactly

KERNELS = {"eager": None, "sdpa-math": SDPBackend.MATH, "sdpa-flash": SDPBackend.FLASH_ATTENTION}
TOLERANCE = 1e-5  # of the largest |logit|


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
@given(
    kernel=st.sampled_from(sorted(KERNELS)),
    hidden_act=st.sampled_from(["gelu", "gelu_new", "relu", "silu"]),
    lengths=st.lists(st.integers(2, 9), min_size=2, max_size=3),
    padding=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_fast_equals_exact_without_biases_under_every_attention_kernel(kernel, hidden_act, lengths, padding, seed):
    """float32 BERT, right-padded batch; layer 1's unit ``CROSSING_UNIT`` is exactly 0 at [CLS] of example 0
    in the eager forward pass (the exact path's), and within rounding of 0 under the kernel: it
    reads the input column where the two forward passes round most differently (not for ReLU,
    whose left and right limits differ: a residual of either sign would pick one of them)."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
        hidden_act=hidden_act,
        attn_implementation="eager" if KERNELS[kernel] is None else "sdpa",
    )
    model = spec.randomize(BertForSequenceClassification(config), seed).float()
    ids, mask = spec.padded_tokens(tuple(lengths), VOCAB, seed=seed)
    ids = torch.nn.functional.pad(ids, (0, padding))
    mask = torch.nn.functional.pad(mask, (0, padding))
    dense = model.bert.encoder.layer[1].intermediate.dense

    def run():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    with sdpa_kernel(KERNELS[kernel] or SDPBackend.MATH):
        kernel_input, _ = _inputs_of(dense, run)
    implementation = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        eager_input, _ = _inputs_of(dense, run)
    finally:
        model.config._attn_implementation = implementation
    assert model.config._attn_implementation == implementation
    column = int((kernel_input[0, 0] - eager_input[0, 0]).abs().argmax())
    if hidden_act != "relu":  # ReLU's slope jumps at 0 from either side: no choice at 0 removes that
        _cross_zero_at(dense, CROSSING_UNIT, eager_input[0, 0], column)

    def forward(i, m):
        return model(input_ids=i, attention_mask=m).logits

    exact = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    if KERNELS[kernel] is None:
        fast = DecompX(forward, model=model, include_biases=False, algorithm="fast").decompose(ids, (mask,))
    else:
        with sdpa_kernel(KERNELS[kernel]):
            fast = DecompX(forward, model=model, include_biases=False, algorithm="fast").decompose(ids, (mask,))
    scale = float(exact.logits.abs().max())
    difference = float((fast.attributions - exact.attributions).abs().max())
    assert difference <= TOLERANCE * scale, f"{kernel}: fast vs exact {difference / scale:.2e} of the logit scale"
    assert float((fast.bias - exact.bias).abs().max()) <= TOLERANCE * scale
