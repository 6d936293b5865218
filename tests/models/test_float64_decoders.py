"""float64 decoders with fully masked query rows: finite, complete, and equal to the model's own.

Left padding (the padding rows see no key: causal mask and padding mask together) or a sliding
window with right padding (padding rows whose window holds only padding) leave query rows with
every key masked. The model's own ``sdpa`` kernel gives such a row no attention. DecompX captures
the forward pass with eager attention (which returns the probabilities) and computes there what
the kernel computes; eager attention itself would spread the row over the masked keys, or, in a
float64 model whose softmax runs in float32 (where the mask's float64 minimum becomes ``-inf``),
return NaN, which then reached every logit. A model whose own output is NaN is refused with the
reason, not with a warning about something else.
"""

from __future__ import annotations

import dataclasses
import warnings

import literal_spec as spec
import pytest
import torch
import transformers as tf
from support.literal_models import llama_weights

from captum_decompx import DecompX

VOCAB = 50
CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    pad_token_id=0,
    num_labels=3,
)
DECODERS = {
    "llama": lambda **extra: tf.LlamaForSequenceClassification(tf.LlamaConfig(**CONFIG, **extra)),
    "mistral-window-2": lambda **extra: tf.MistralForSequenceClassification(
        tf.MistralConfig(**CONFIG, sliding_window=2, **extra)
    ),
    "gemma3-window-2": lambda **extra: tf.Gemma3TextForSequenceClassification(
        tf.Gemma3TextConfig(**CONFIG, head_dim=4, sliding_window=2, **extra)
    ),
}
LENGTHS = (6, 3)


def padded(side: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    seq = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), seq, dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        where = slice(seq - length, seq) if side == "left" else slice(0, length)
        ids[row, where] = torch.randint(2, VOCAB, (length,), generator=generator)
    return ids, (ids != 0).long()


def forward_of(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max()) / max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", list(DECODERS))
def test_fully_masked_rows_give_finite_complete_results_equal_to_the_models_own(name, side):
    model = spec.randomize(DECODERS[name](), seed=3)  # float64, sdpa (the default)
    assert model.config._attn_implementation == "sdpa"
    ids, mask = padded(side, seed=3)
    forward = forward_of(model)
    with torch.no_grad():
        own = forward(ids, mask)
    assert bool(torch.isfinite(own).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing here is a softmax, an offset or a cap
        exact = DecompX(forward, model=model).decompose(ids, (mask,))
        free = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
        fast = DecompX(forward, model=model, include_biases=False, algorithm="fast").decompose(ids, (mask,))
        target = own.argmax(-1)
        scores, delta = DecompX(forward, model=model).attribute(
            ids, target=target, additional_forward_args=(mask,), return_convergence_delta=True
        )
    for out in (exact, free, fast):
        assert bool(torch.isfinite(out.attributions).all()) and bool(torch.isfinite(out.bias).all())
        # The captured forward pass is the model's own, to float64 precision (its softmax included).
        assert relative(out.logits, own) <= 1e-12
    # Complete up to the float32 rounding of the real RMSNorm (the decomposition uses the float64
    # statistics of its real input).
    assert relative(exact.attributions.sum(1), own) <= 1e-6
    assert relative(free.attributions.sum(1) + free.bias, own) <= 1e-6
    assert relative(fast.attributions.sum(1) + fast.bias, own) <= 1e-12
    assert relative(fast.attributions, free.attributions) <= 1e-6
    assert relative(scores.sum(-1), own.gather(1, target[:, None])[:, 0]) <= 1e-6
    assert float(delta.abs().max()) <= 1e-6 * max(1.0, float(own.abs().max()))


@pytest.mark.parametrize("include_biases, algorithm", [(True, "exact"), (False, "exact"), (False, "fast")])
def test_left_padded_float64_llama_matches_the_literal_spec(include_biases, algorithm):
    """The literal forward pass of the whole left-padded row under its mask, with the fused
    kernel's rule for a query that sees no key (no attention), in float64 as sdpa computes it."""
    model = spec.randomize(DECODERS["llama"](), seed=4)
    ids, mask = padded("left", seed=4)
    out = DecompX(forward_of(model), model=model, include_biases=include_biases, algorithm=algorithm).decompose(ids, (mask,))
    weights = dataclasses.replace(llama_weights(model), softmax=lambda scores: torch.softmax(scores, dim=-1))
    scale = float(out.logits.abs().max())
    for b in range(ids.shape[0]):
        embeddings = model.model.embed_tokens.weight[ids[b]].detach().to(spec.DTYPE)
        last = ids.shape[1] - 1
        trace = spec.real_forward(weights, embeddings, pooled_row=last, keys=mask[b].bool())
        spec.assert_matches(trace.logits, out.logits[b], scale, f"example {b}: literal forward vs logits", 1e-12)
        literal = spec.decompose(weights, embeddings, trace, last, mode="rule" if include_biases else "drop")
        spec.assert_matches(out.attributions[b], literal.contributions, scale, f"example {b}: attributions")
        if not include_biases:
            expected_bias = trace.logits - literal.contributions.sum(0)
            spec.assert_matches(out.bias[b], expected_bias, scale, f"example {b}: the biases' share")


@pytest.mark.parametrize("name", ["mistral-window-2", "gemma3-window-2"])
def test_right_padded_sliding_window_row_equals_the_example_alone(name):
    """Right padding changes nothing for the real tokens (same positions, same windows): each
    padded row's attributions equal those of its example without padding."""
    model = spec.randomize(DECODERS[name](), seed=5)
    ids, mask = padded("right", seed=5)
    forward = forward_of(model)
    for algorithm, include_biases in (("exact", True), ("fast", False)):
        dx = DecompX(forward, model=model, algorithm=algorithm, include_biases=include_biases)
        batch = dx.decompose(ids, (mask,))
        for row, length in enumerate(LENGTHS):
            alone = dx.decompose(ids[row : row + 1, :length], (mask[row : row + 1, :length],))
            assert relative(batch.attributions[row, :length], alone.attributions[0]) <= 1e-9, (algorithm, row)
            if length < ids.shape[1]:  # the padding after the pooled token is read by no real row
                assert float(batch.attributions[row, length:].abs().max()) == 0.0


EAGER = {
    "llama-eager": lambda: DECODERS["llama"](attn_implementation="eager"),
    # transformers 5 runs Gemma 2 with eager attention only
    "gemma2-window-2": lambda: tf.Gemma2ForSequenceClassification(
        tf.Gemma2Config(**CONFIG, head_dim=4, sliding_window=2, attn_implementation="eager")
    ),
}


@pytest.mark.parametrize("name", list(EAGER))
@pytest.mark.parametrize("algorithm", ["exact", "fast"])
def test_a_model_whose_own_output_is_nan_is_refused_with_the_reason_and_no_warning(name, algorithm):
    """Eager attention in a float64 Llama or Gemma 2 runs its softmax in float32: the model itself
    returns NaN for a left-padded row. DecompX says so (it used to warn that the forward function
    adds an offset to the logits, which it does not)."""
    model = spec.randomize(EAGER[name](), seed=6)
    ids, mask = padded("left", seed=6)
    forward = forward_of(model)
    with torch.no_grad():
        assert not bool(torch.isfinite(forward(ids, mask)).all())
    dx = DecompX(forward, model=model, algorithm=algorithm, include_biases=algorithm == "exact")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"not finite \(NaN or infinity\) for example\(s\) 1.*attn_implementation='sdpa'"):
            dx.attribute(ids, target=0, additional_forward_args=(mask,))
        with pytest.raises(ValueError, match="not finite"):
            dx.decompose(ids, (mask,))
