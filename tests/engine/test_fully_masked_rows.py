"""A query row whose every key is masked, on both paths.

Under an additive mask (the dtype's minimum at masked keys, which Transformers 4.x builds for
ModernBERT's local windows) the model's own attention spreads such a row evenly over all keys;
torch's fused kernel gets that forward right, but its backward recomputes the probabilities from
the row's log-sum-exp, where the minimum swallows ``log(keys)``: the value gradient is ``keys`` times
too large. The fast path's frozen attention must give the value gradient of the even spread. The
whole-model check is ``test_padding_sides`` (ModernBERT, left padding) under Transformers 4.57.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from captum_decompx.components.attention import _FreezeAttention


def attention_inputs(masked_row: int = 1):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, 4, 8, generator=generator) for _ in range(3))
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = torch.finfo(torch.float32).min  # the first two keys are padding
    mask[..., masked_row, :] = torch.finfo(torch.float32).min  # this query sees no key at all
    return query, key, value.requires_grad_(), mask


def test_a_fully_masked_row_gives_the_value_gradient_of_the_even_spread():
    query, key, value, mask = attention_inputs()
    with _FreezeAttention():
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    (gradient,) = torch.autograd.grad(output[0, :, 1].sum(), value)  # row 1: every key masked

    # by hand: the row's probabilities are 1/4 on each key, so each value row gets 1/4 per output feature
    torch.testing.assert_close(gradient, torch.full_like(value, 0.25), rtol=0, atol=1e-6)


def test_rows_with_a_key_left_are_the_kernels_own():
    query, key, value, mask = attention_inputs()
    with _FreezeAttention():
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    expected = F.scaled_dot_product_attention(query, key, value.detach(), attn_mask=mask)
    torch.testing.assert_close(output.detach(), expected, rtol=0, atol=1e-6)
    (gradient,) = torch.autograd.grad(output[0, :, 2].sum(), value)
    scores = torch.einsum("hd,hkd->hk", query[0, :, 2], key[0]) / 8**0.5 + mask[0, 0, 2]
    probabilities = torch.softmax(scores, -1)  # (heads, keys)
    torch.testing.assert_close(gradient[0], probabilities[..., None].expand(2, 4, 8), rtol=0, atol=1e-6)
