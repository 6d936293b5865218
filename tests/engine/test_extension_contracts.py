"""What an extension must provide, checked with clear errors: an approximation on the fast path
needs ``frozen_slope`` (refused when DecompX is built), and an adapter's attention module must give
its post-softmax probabilities as ``output[1]`` (refused when the exact path reads them)."""

from __future__ import annotations

import pytest
import torch
import transformers

from captum_decompx import DecompX
from captum_decompx.components import Approximation, register_approximation
from captum_decompx.components.activations import ZeroOrigin
from captum_decompx.testing import randomize_parameters, registrations_restored

IDS = torch.tensor([[2, 7, 9, 4, 3]])


def tiny_bert(seed: int = 0) -> transformers.BertForSequenceClassification:
    config = transformers.BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, num_labels=3
    )
    return randomize_parameters(transformers.BertForSequenceClassification(config), seed=seed)


class ScaledZeroOrigin(Approximation):
    """The zero-origin slope times 0.9, the rest a bias: an approximation without a fast-path rule."""

    def propagate(self, pieces, pre_activation, function, settings, *, inplace):
        return ZeroOrigin().propagate(pieces, pre_activation, function, settings, inplace=False) * 0.9


def test_an_approximation_without_frozen_slope_is_refused_when_the_fast_path_is_chosen():
    model = tiny_bert()
    with registrations_restored():
        register_approximation("scaled-zo", ScaledZeroOrigin())
        assert not ScaledZeroOrigin().has_frozen_slope and ZeroOrigin().has_frozen_slope
        for options in (dict(algorithm="fast"), dict(algorithm="auto"), dict(algorithm="auto", head_approximation="scaled-zo")):
            ffn = options.pop("head_approximation", None) is None
            option = "ffn_approximation" if ffn else "head_approximation"
            with pytest.raises(ValueError, match=rf"{option}='scaled-zo'.*frozen_slope.*algorithm='exact'"):
                DecompX(model, include_biases=False, **{option: "scaled-zo"}, **options)
        # Not on the paths that never freeze it: the exact path, and the fast path without the FFN.
        exact = DecompX(model, include_biases=False, ffn_approximation="scaled-zo", algorithm="exact").decompose(IDS)
        zero_origin = DecompX(model, include_biases=False, algorithm="exact").decompose(IDS)
        assert not torch.allclose(exact.attributions, zero_origin.attributions, atol=1e-4)  # the rule was used
        DecompX(model, include_biases=False, include_ffn=False, ffn_approximation="scaled-zo", algorithm="fast")


def _second_output_replaced(model, replace):
    """Forward hooks that make every attention module return ``(output[0], replace(output))``."""
    return [
        layer.attention.self.register_forward_hook(lambda _module, _args, output: (output[0], replace(output)))
        for layer in model.bert.encoder.layer
    ]


@pytest.mark.parametrize(
    "replace, message",
    [
        (lambda output: output[1] * 3.0, r"rows do not sum to 1 \(they sum to 3"),  # not normalized
        (lambda output: output[0], r"a tensor of shape \(1, 5, 16\)"),  # the context, not the probabilities
        (lambda output: (output[1],), r"returned a tuple as its second output"),
    ],
)
def test_an_attention_module_whose_second_output_is_not_probabilities_is_refused(replace, message):
    model = tiny_bert(1)
    handles = _second_output_replaced(model, replace)
    try:
        with pytest.raises(RuntimeError, match=message) as raised:
            DecompX(model, algorithm="exact").decompose(IDS)
        assert "output[1]" in str(raised.value) and "force_output_attentions" in str(raised.value)
        assert "layer 0 (attention.self)" in str(raised.value)
    finally:
        for handle in handles:
            handle.remove()
    out = DecompX(model, algorithm="exact").decompose(IDS)  # the real probabilities are accepted
    torch.testing.assert_close(out.attributions.sum(1) + out.bias, out.logits, rtol=1e-5, atol=1e-5)
