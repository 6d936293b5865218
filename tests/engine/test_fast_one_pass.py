"""The fast path is one frozen forward pass of the real model and one backward pass, and leaves the
model (hooks, attention implementation, torch function modes) exactly as it found it."""

from __future__ import annotations

import pytest
import torch
from support.architectures import ENCODERS, forward_of, padded_batch
from support.snapshots import assert_unchanged, snapshot

from captum_decompx import DecompX
from captum_decompx.testing import randomize_parameters

ARCHITECTURES = ("bert", "deberta-v2", "albert", "modernbert-cls", "gpt2", "llama")
CALLS = {
    "attribute": lambda dx, ids, mask: dx.attribute(ids, target=[0, 2, 1], additional_forward_args=(mask,)),
    "decompose": lambda dx, ids, mask: dx.decompose(ids, additional_forward_args=(mask,)),
}


def _model(name: str):
    return randomize_parameters(ENCODERS[name](), 0)


@pytest.mark.parametrize("include_head", [True, False], ids=["head", "no-head"])
@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fast_path_runs_the_model_forward_once(architecture, call, include_head):
    model = _model(architecture)
    ids, mask = padded_batch(0)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        explainer = DecompX(forward_of(model), model=model, include_biases=False, include_head=include_head)
        CALLS[call](explainer, ids, mask)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_decompose_gets_every_class_from_one_backward_pass(monkeypatch):
    model = _model("bert")
    ids, mask = padded_batch(0)
    backward_calls = []
    real_grad = torch.autograd.grad

    def counting_grad(outputs, inputs, *args, **kwargs):
        # Backward passes through the model differentiate the frozen pass's (batch, seq, hidden)
        # embeddings; the forward-function contract's vector-Jacobian product of the tail
        # differentiates only the model's output and is not counted.
        leaves = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        if any(leaf.dim() == 3 and leaf.shape[:2] == ids.shape for leaf in leaves):
            backward_calls.append(kwargs.get("is_grads_batched", False))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    out = DecompX(forward_of(model), model=model, include_biases=False).decompose(ids, additional_forward_args=(mask,))
    assert out.attributions.shape[-1] == 3
    assert backward_calls == [True]  # three classes, one batched backward pass
    backward_calls.clear()
    DecompX(forward_of(model), model=model, include_biases=False).attribute(
        ids, target=[0, 2, 1], additional_forward_args=(mask,)
    )
    assert backward_calls == [False]  # one class per example: one plain backward pass


def _inner_value_module(model, architecture: str):
    """A module that runs inside the second layer's attention (so a failure there happens while
    the attention probabilities are being frozen)."""
    if architecture == "bert":
        return model.bert.encoder.layer[1].attention.self.value
    if architecture == "deberta-v2":
        return model.deberta.encoder.layer[1].attention.self.value_proj
    return model.model.layers[1].self_attn.v_proj


@pytest.mark.parametrize("architecture", ["bert", "deberta-v2", "llama"])
def test_nothing_remains_after_success_and_after_an_error(architecture):
    model = _model(architecture)
    ids, mask = padded_batch(0)
    forward = forward_of(model)
    before = snapshot(model)
    modes_before = torch._C._len_torch_function_stack()
    with torch.no_grad():
        logits_before = forward(ids, mask)

    DecompX(forward, model=model, include_biases=False).decompose(ids, additional_forward_args=(mask,))
    assert_unchanged(model, before)
    assert torch._C._len_torch_function_stack() == modes_before

    def explode(module, args, output):
        raise RuntimeError("failed inside the attention")

    handle = _inner_value_module(model, architecture).register_forward_hook(explode)
    with_user_hook = snapshot(model)
    with pytest.raises(RuntimeError, match="failed inside the attention"):
        DecompX(forward, model=model, include_biases=False).attribute(ids, target=0, additional_forward_args=(mask,))
    assert_unchanged(model, with_user_hook)
    assert torch._C._len_torch_function_stack() == modes_before
    handle.remove()
    assert_unchanged(model, before)

    def failing_forward(input_ids, attention_mask):
        forward(input_ids, attention_mask)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        DecompX(failing_forward, model=model, include_biases=False).decompose(ids, additional_forward_args=(mask,))
    assert_unchanged(model, before)
    assert torch._C._len_torch_function_stack() == modes_before

    # the model computes as before, and its gradients flow through softmax and norms again
    with torch.no_grad():
        assert torch.equal(forward(ids, mask), logits_before)
    scores = torch.randn(2, 5, requires_grad=True)
    assert torch.softmax(scores, -1).grad_fn is not None


def test_a_forward_function_without_gradients_is_refused():
    model = _model("bert")
    ids, mask = padded_batch(0)

    def no_grad_forward(input_ids, attention_mask):
        with torch.no_grad():
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

    with pytest.raises(RuntimeError, match="no_grad"):
        DecompX(no_grad_forward, model=model, include_biases=False).attribute(ids, target=0, additional_forward_args=(mask,))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_fast_path_on_eager_and_sdpa_attention_equals_exact(implementation):
    """Both freezable attention implementations (a softmax; the fused kernel with query and key cut
    from the graph) give the exact decomposition; the model keeps its implementation."""
    model = _model("bert")
    model.config._attn_implementation = implementation
    ids, mask = padded_batch(0)
    forward = forward_of(model)
    fast = DecompX(forward, model=model, include_biases=False).decompose(ids, additional_forward_args=(mask,))
    exact = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(ids, additional_forward_args=(mask,))
    scale = float(exact.logits.abs().max())
    assert float((fast.attributions - exact.attributions).abs().max()) <= 2e-6 * scale
    assert float((fast.bias - exact.bias).abs().max()) <= 4e-6 * scale
    assert torch.all(fast.attributions[mask == 0] == 0)
    assert model.config._attn_implementation == implementation
