"""Registered bias rules and approximations: a user's own rule is used, checked and removable."""

from __future__ import annotations

import pytest
import torch
from support.classifiers import cached_model, make_padded_batch, padding_id

from captum_decompx import BiasRule, DecompX, register_bias_rule
from captum_decompx.components import BIAS_RULES, FFN_APPROXIMATIONS, HEAD_APPROXIMATIONS
from captum_decompx.components.bias_rules import unregister_bias_rule

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


class LastPiece(BiasRule):
    """All of each bias to the last input token (not the first, unlike ``"cls"``)."""

    def scores(self, pieces, bias):
        scores = torch.zeros(pieces.shape[:-1], dtype=pieces.dtype, device=pieces.device)
        scores[..., -1] = 1.0
        return scores


@pytest.fixture
def registered():
    names = []

    def register(name, rule):
        register_bias_rule(name, rule)
        names.append(name)

    yield register
    for name in names:
        unregister_bias_rule(name)


def _decompose(model, batch, **options):
    return DecompX(model, **options).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))


def test_a_registered_function_rule_gives_the_builtin_rules_values(registered):
    model = cached_model("bert", 0)
    batch = make_padded_batch(seed=0, pad_token_id=padding_id(model))
    registered("piece-norm", lambda pieces, bias: torch.linalg.vector_norm(pieces, dim=-1))
    assert "piece-norm" in BIAS_RULES
    mine = _decompose(model, batch, bias_decomposition="piece-norm").attributions
    builtin = _decompose(model, batch, bias_decomposition="norm").attributions
    torch.testing.assert_close(mine, builtin, rtol=0, atol=0)


def test_a_registered_rule_object_is_used_and_complete(registered):
    """Every bias goes to the last piece: complete for the unpadded example (in the padded ones
    the last piece is padding), and unlike every built-in rule."""
    model = cached_model("bert", 1)
    batch = make_padded_batch(seed=1, pad_token_id=padding_id(model))
    registered("last-piece", LastPiece())
    out = _decompose(model, batch, bias_decomposition="last-piece")
    with torch.no_grad():
        own_logits = model(batch.input_ids, batch.attention_mask).logits
    assert batch.lengths[0] == batch.input_ids.shape[1]
    torch.testing.assert_close(out.attributions[0].sum(0), own_logits[0], **TOLERANCE)
    for builtin in ("absdot", "cls", "equal"):
        other = _decompose(model, batch, bias_decomposition=builtin).attributions
        assert (out.attributions - other).abs().max() > 1e-3


def test_registering_a_name_twice_needs_overwrite(registered):
    registered("twice", LastPiece())
    with pytest.raises(ValueError, match="overwrite"):
        register_bias_rule("twice", LastPiece())
    with pytest.raises(ValueError, match="overwrite"):
        register_bias_rule("absdot", LastPiece())


def test_unknown_rule_lists_the_registered_ones(registered):
    registered("mine", LastPiece())
    model = cached_model("bert", 0)
    with pytest.raises(ValueError) as error:
        DecompX(model, bias_decomposition="nope")
    assert "'mine'" in str(error.value) and "'absdot'" in str(error.value)


def test_a_rule_must_be_a_rule_or_a_function():
    with pytest.raises(TypeError, match="BiasRule"):
        register_bias_rule("not-a-rule", 3)


def test_builtin_names():
    assert tuple(BIAS_RULES) == ("absdot", "abssim", "norm", "equal", "cls")
    assert tuple(FFN_APPROXIMATIONS) == ("zo", "la", "relu")
    assert tuple(HEAD_APPROXIMATIONS) == ("zo", "la")


def test_a_registered_norm_kind_resolves_and_propagates_like_the_module():
    """A normalization module DecompX does not know is refused until a kind is registered for it;
    then the frozen norm on a single piece reproduces the module's own output."""
    from captum_decompx.components import Settings
    from captum_decompx.components.norms import RMSNormKind, norm_params, normalize, register_norm_kind, unregister_norm_kind

    class ScaleByRootMeanSquare(torch.nn.Module):
        """An RMSNorm under a name no registered kind matches."""

        def __init__(self, size: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(size))
            self.variance_epsilon = 1e-6

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    class ScaleByRootMeanSquareKind(RMSNormKind):
        def matches(self, module):
            return type(module).__name__ == "ScaleByRootMeanSquare"

    module = ScaleByRootMeanSquare(8).double()
    with torch.no_grad():
        module.weight.copy_(1.0 + 0.3 * torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    with pytest.raises(TypeError, match="register_norm_kind"):
        norm_params(module, torch.float64)
    register_norm_kind("scale-rms", ScaleByRootMeanSquareKind())
    try:
        params = norm_params(module, torch.float64)
        assert params.kind == "scale-rms" and params.eps == module.variance_epsilon
        hidden = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        propagated = normalize(hidden.unsqueeze(2), hidden, params, Settings()).squeeze(2)
        with torch.no_grad():
            torch.testing.assert_close(propagated, module(hidden), rtol=1e-12, atol=1e-12)
    finally:
        unregister_norm_kind("scale-rms")


def test_every_registry_has_the_same_verbs():
    """register (overwrite= to replace), unregister and a public look-up, for each kind of entry."""
    from captum_decompx import adapters, evaluation
    from captum_decompx.adapters.base import HeadStep
    from captum_decompx.components import (
        LinearLayout,
        approximation,
        head_step_kind,
        layout_of,
        norm_kind,
        register_approximation,
        register_head_step,
        register_linear_layout,
        register_norm_kind,
        unregister_approximation,
        unregister_head_step,
        unregister_linear_layout,
    )
    from captum_decompx.components.activations import ZeroOrigin
    from captum_decompx.components.head import LinearStep
    from captum_decompx.components.norms import LayerNormKind, unregister_norm_kind

    class MyStep(HeadStep):
        pass

    class MyLinear(torch.nn.Linear):
        pass

    mine = LinearLayout("my-linear", lambda module: isinstance(module, MyLinear), lambda module: module.weight)
    entries = [
        (lambda **o: register_bias_rule("mine", LastPiece(), **o), lambda: unregister_bias_rule("mine"), lambda: BIAS_RULES),
        (lambda **o: register_approximation("mine", ZeroOrigin(), **o), lambda: unregister_approximation("mine"), lambda: FFN_APPROXIMATIONS),
        (lambda **o: register_norm_kind("mine", LayerNormKind(), **o), lambda: unregister_norm_kind("mine"), None),
        (lambda **o: register_linear_layout(mine, **o), lambda: unregister_linear_layout("my-linear"), None),
        (lambda **o: register_head_step(MyStep, LinearStep(), **o), lambda: unregister_head_step(MyStep), None),
        (
            lambda **o: adapters.register_adapter("my-type", adapters.ROBERTA, **o),
            lambda: adapters.unregister_adapter("my-type"),
            adapters.supported_model_types,
        ),
        (
            lambda **o: evaluation.register_method("mine", "Mine", lambda context: None, **o),
            lambda: evaluation.unregister_method("mine"),
            lambda: list(evaluation.METHOD_REGISTRY),
        ),
    ]
    for register, unregister, names in entries:
        register()
        try:
            with pytest.raises(ValueError, match="overwrite=True"):
                register()
            register(overwrite=True)
            if names is not None:
                assert any(str(name).startswith(("mine", "my-")) for name in names())
        finally:
            unregister()
        with pytest.raises(ValueError, match="registered"):
            unregister()
    assert isinstance(approximation("zo"), ZeroOrigin)
    assert isinstance(norm_kind("layer"), LayerNormKind)
    assert layout_of(MyLinear(2, 2)).name == "nn.Linear"  # unregistered: the built-in layout again
    with pytest.raises(ValueError, match="Unknown approximation 'nope'; registered: 'zo', 'la', 'relu'"):
        approximation("nope")
    with pytest.raises(TypeError, match="register_head_step"):
        head_step_kind(MyStep())


def test_a_layout_registered_later_is_tried_first():
    from captum_decompx.components import LinearLayout, layout_of, register_linear_layout, unregister_linear_layout

    transposed = LinearLayout("transposed", lambda module: isinstance(module, torch.nn.Linear), lambda module: module.weight.T)
    register_linear_layout(transposed)
    try:
        assert layout_of(torch.nn.Linear(2, 3)) is transposed
    finally:
        unregister_linear_layout("transposed")
    assert layout_of(torch.nn.Linear(2, 3)).name == "nn.Linear"


def test_registrations_restored_undoes_registrations():
    from captum_decompx.testing import registrations_restored

    with registrations_restored():
        register_bias_rule("temporary", LastPiece())
        register_bias_rule("absdot", LastPiece(), overwrite=True)
        assert "temporary" in BIAS_RULES
    assert "temporary" not in BIAS_RULES
    from captum_decompx.components import bias_rule
    from captum_decompx.components.bias_rules import AbsDot

    assert isinstance(bias_rule("absdot"), AbsDot)


def test_randomize_parameters_redraws_biases_and_gains_reproducibly():
    from transformers import BertConfig, BertForSequenceClassification

    from captum_decompx.testing import randomize_parameters

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12)
    first = randomize_parameters(BertForSequenceClassification(config), seed=3, bias_std=0.2, norm_gain_std=0.3)
    second = randomize_parameters(BertForSequenceClassification(config).train(), seed=3)
    assert not second.training
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    dense_bias = first.bert.encoder.layer[0].attention.self.query.bias
    assert 0.1 < float(dense_bias.detach().std()) < 0.4  # ~ N(0, 0.2^2), not HF's zeros
    gain = first.bert.encoder.layer[0].output.LayerNorm.weight
    assert float((gain.detach() - 1).abs().max()) > 0.05 and 0.5 < float(gain.detach().mean()) < 1.5  # around one, not ones
    embeddings = first.bert.embeddings.word_embeddings.weight
    assert 0.2 < float(embeddings.detach().std()) < 0.4  # weight_std by default
