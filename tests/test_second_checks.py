"""Second, independent checks for values that a single test guarded so far.

Each test here catches a realistic bug by a different computation than the test that caught it
first: the model's own output where that one compared two paths, two paths where that one read a
shape, another parameter set where that one used one.
"""

from __future__ import annotations

import pytest
import torch
from test_architectures import CAUSAL_LMS, padded_batch, redraw

from captum_decompx import DecompX

# ----------------------------------------------------------------------------------------------
# Right-padded causal LMs in decompose(): fast = exact without biases, with and without the head


@pytest.mark.parametrize("name", ["gpt2-lm", "llama-lm", "qwen3-lm"])
@pytest.mark.parametrize("include_head", [True, False], ids=["head", "no-head"])
def test_right_padded_causal_lm_fast_equals_exact_and_reads_the_last_real_token(name, include_head):
    """The fast path pools the last real token of each right-padded example, as the exact path
    does; its logits are the model's at that position (read here from the model's own output)."""
    model = redraw(CAUSAL_LMS[name](), 5)
    lengths = (7, 4, 2)
    ids, mask = padded_batch(5, lengths=lengths)

    def forward(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    with torch.no_grad():
        per_position = forward(ids, mask)
    expected_logits = per_position[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
    scale = max(1.0, float(expected_logits.abs().max()))
    options = dict(include_biases=False, include_head=include_head)
    exact = DecompX(forward, model=model, method="exact", **options).decompose(ids, (mask,))
    fast = DecompX(forward, model=model, method="fast", **options).decompose(ids, (mask,))
    for result in (exact, fast):
        torch.testing.assert_close(result.logits, expected_logits, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(fast.attributions, exact.attributions, rtol=0, atol=1e-5 * scale)
    if include_head:
        torch.testing.assert_close(fast.bias, exact.bias, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(fast.attributions.sum(1) + fast.bias, expected_logits, rtol=0, atol=1e-5 * scale)
    for row, length in enumerate(lengths):  # padding after the pooled token carries nothing
        assert bool((exact.attributions[row, length:] == 0).all()) and bool((fast.attributions[row, length:] == 0).all())
