"""One walk, one decision: both algorithms install their hooks by the same walk of the network, and
the algorithm is chosen once, by the ``algorithm=`` option."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.architectures import ENCODERS, forward_of, padded_batch
from support.snapshots import assert_unchanged, snapshot

from captum_decompx import DecompX
from captum_decompx.adapters import adapter_for
from captum_decompx.adapters.base import Linear
from captum_decompx.components import Settings
from captum_decompx.components.head import HeadStepKind, LinearStep, register_head_step
from captum_decompx.components.network import Network
from captum_decompx.core.algorithms import Exact, Fast, choose_algorithm
from captum_decompx.core.capture import Capture, hooked_pass
from captum_decompx.core.freezing import Freezer
from captum_decompx.testing import randomize_parameters, registrations_restored

ALGORITHMS = {"exact": dict(algorithm="exact"), "fast": dict(include_biases=False, algorithm="fast")}


def _bert():
    return randomize_parameters(ENCODERS["bert"](), 0)


@dataclasses.dataclass(frozen=True)
class PlainLinear(Linear):
    """A head step class whose kind below has no fast-path rule."""


class LinearWithoutFastRule(LinearStep):
    freeze = HeadStepKind.freeze  # the default: no rule


def test_the_walk_lists_every_component_once_per_layer_in_forward_order():
    model = _bert()
    network = Network.of(adapter_for(model))
    layers = network.layer_modules(model)
    walked = list(network.walk(model, layers))
    kinds = [type(component).__name__ for component, _, _ in walked]
    per_layer = ["Attention", "Normalization", "Normalization", "FeedForward"]
    assert kinds == ["CallChecks", "LayerInput"] + per_layer * len(layers) + ["Head", "Pooling"]
    firsts = [first for component, root, first in walked if root is layers[0] and type(component).__name__ in per_layer]
    assert firsts == [True] * len(per_layer)
    assert not any(first for component, root, first in walked if root is layers[1])


@pytest.mark.parametrize("hooked", [Capture, Freezer], ids=["exact", "fast"])
def test_both_passes_hook_through_one_recorder_and_leave_no_hook(hooked):
    model = _bert()
    ids, mask = padded_batch(0)
    arguments = (model, adapter_for(model)) + ((Settings(),) if hooked is Freezer else ())
    before = snapshot(model)
    with hooked_pass(hooked(*arguments)) as installed, torch.enable_grad():
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        assert hooks == len(installed.recorder.handles) > 0  # every hook is the recorder's
        model(ids, attention_mask=mask)
    assert_unchanged(model, before)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_both_algorithms_refuse_a_forward_function_that_runs_the_model_twice_with_one_message(algorithm):
    model = _bert()
    ids, mask = padded_batch(0)

    def twice(input_ids, attention_mask):
        model(input_ids, attention_mask=attention_mask)
        return model(input_ids, attention_mask=attention_mask).logits

    before = snapshot(model)
    with pytest.raises(RuntimeError, match="ran the model's layers 2 times; DecompX decomposes one forward pass"):
        DecompX(twice, model=model, **ALGORITHMS[algorithm]).attribute(ids, target=0, additional_forward_args=(mask,))
    assert_unchanged(model, before)


@pytest.fixture
def plain_linear_step():
    with registrations_restored():
        register_head_step(PlainLinear, LinearWithoutFastRule())
        yield


@pytest.mark.usefixtures("plain_linear_step")
def test_a_head_step_kind_without_a_fast_rule_is_refused_by_the_fast_path_only():
    model = _bert()
    ids, mask = padded_batch(0)
    base = adapter_for(model)
    adapter = dataclasses.replace(base, head=[*base.head[:-1], PlainLinear(base.head[-1].path)])
    exact = DecompX(forward_of(model), model=model, adapter=adapter, include_biases=False, algorithm="exact")
    reference = DecompX(forward_of(model), model=model, include_biases=False, algorithm="exact")
    out = exact.decompose(ids, additional_forward_args=(mask,))
    torch.testing.assert_close(out.attributions, reference.decompose(ids, additional_forward_args=(mask,)).attributions)
    before = snapshot(model)
    with pytest.raises(NotImplementedError, match="no rule for the fast path"):
        DecompX(forward_of(model), model=model, adapter=adapter, algorithm="fast", include_biases=False).decompose(
            ids, additional_forward_args=(mask,)
        )
    assert_unchanged(model, before)


def test_auto_is_resolved_once_to_one_strategy():
    pooled = dict(per_position=False, include_head=True)
    assert isinstance(choose_algorithm("auto", include_biases=True, **pooled), Exact)
    assert isinstance(choose_algorithm("auto", include_biases=False, **pooled), Fast)
    each = choose_algorithm("auto", include_biases=False, include_head=True, per_position=True)
    assert isinstance(each, Fast) and isinstance(each.per_position_decompose, Exact)  # decompose() of every output
    assert isinstance(choose_algorithm("fast", include_biases=False, include_head=True, per_position=True), Fast)
    assert choose_algorithm("fast", include_biases=False, include_head=True, per_position=True).per_position_decompose is None
    assert isinstance(choose_algorithm("auto", include_biases=False, include_head=False, per_position=True), Exact)
    with pytest.raises(ValueError, match="include_biases=False"):
        choose_algorithm("fast", include_biases=True, **pooled)


def test_the_former_option_name_is_refused_with_the_new_one():
    model = _bert()
    with pytest.raises(TypeError, match=r"algorithm= now, e\.g\. DecompX\(model, algorithm='exact'\)"):
        DecompX(model, method="exact")
