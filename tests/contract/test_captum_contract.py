"""DecompX honours Captum's attribution contract."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Attribution
from support.classifiers import NUM_LABELS, assert_close_to_scale, cached_model, make_model, make_padded_batch

from captum_decompx import DecompX

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
METHODS = {"exact": dict(), "fast": dict(include_biases=False)}


@pytest.fixture(scope="module")
def model():
    return cached_model("bert", seed=0)


@pytest.fixture(scope="module")
def batch():
    return make_padded_batch()


def own_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_is_a_captum_attribution(model):
    explainer = DecompX(model)
    assert isinstance(explainer, Attribution)
    assert DecompX.get_name() == "DecompX"
    assert explainer.get_name() == "DecompX"
    assert explainer.has_convergence_delta() is True
    assert explainer.multiplies_by_inputs is True


@pytest.mark.parametrize("method", list(METHODS))
def test_attribute_shapes_tensor_and_tuple_input(model, batch, method):
    explainer = DecompX(model, **METHODS[method])
    args = (batch.attention_mask,)
    attributions = explainer.attribute(batch.input_ids, target=1, additional_forward_args=args)
    assert isinstance(attributions, torch.Tensor)
    assert attributions.shape == batch.input_ids.shape

    as_tuple = explainer.attribute((batch.input_ids,), target=1, additional_forward_args=args)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], attributions)


@pytest.mark.parametrize("method", list(METHODS))
def test_target_forms(model, batch, method):
    explainer = DecompX(model, **METHODS[method])
    args = (batch.attention_mask,)
    full = explainer.decompose(batch.input_ids, additional_forward_args=args).attributions  # (B, N, C)

    for target in range(NUM_LABELS):
        by_int = explainer.attribute(batch.input_ids, target=target, additional_forward_args=args)
        assert_close_to_scale(by_int, full[..., target], what=f"target={target}")

    per_example = [2, 0, 1]
    expected = torch.stack([full[row, :, t] for row, t in enumerate(per_example)])
    by_list = explainer.attribute(batch.input_ids, target=per_example, additional_forward_args=args)
    by_tensor = explainer.attribute(batch.input_ids, target=torch.tensor(per_example), additional_forward_args=args)
    assert_close_to_scale(by_list, expected, what="target list")
    assert_close_to_scale(by_tensor, expected, what="target tensor")


def test_target_none_on_a_single_output_model(batch):
    single = cached_model("bert", seed=0, num_labels=1)
    explainer = DecompX(single)
    args = (batch.attention_mask,)
    attributions, delta = explainer.attribute(
        batch.input_ids, additional_forward_args=args, return_convergence_delta=True
    )
    assert attributions.shape == batch.input_ids.shape
    logits = own_logits(single, batch)
    torch.testing.assert_close(attributions.sum(-1), logits[:, 0], **TOLERANCE)
    torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=1e-5)


def test_target_none_on_a_multi_label_model_raises_listing_the_labels(model, batch):
    with pytest.raises(ValueError) as error:
        DecompX(model).attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    message = str(error.value)
    assert "target" in message
    for label in range(NUM_LABELS):
        assert str(label) in message
    assert "LABEL_2" in message


@pytest.mark.parametrize("method", list(METHODS))
def test_convergence_delta(model, batch, method):
    explainer = DecompX(model, **METHODS[method])
    args = (batch.attention_mask,)
    targets = [0, 1, 2]
    attributions, delta = explainer.attribute(
        batch.input_ids, target=targets, additional_forward_args=args, return_convergence_delta=True
    )
    logits = own_logits(model, batch)
    target_logits = logits[torch.arange(3), torch.tensor(targets)]
    assert delta.shape == (3,)
    torch.testing.assert_close(delta, attributions.sum(-1) - target_logits, **TOLERANCE)
    computed = explainer.compute_convergence_delta(attributions, batch.input_ids, target=targets, additional_forward_args=args)
    torch.testing.assert_close(computed, delta, **TOLERANCE)
    if method == "exact":  # with biases included the decomposition is complete
        torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=1e-5)
    else:  # without biases the delta is minus the biases' share
        out = explainer.decompose(batch.input_ids, additional_forward_args=args)
        torch.testing.assert_close(delta, -out.bias[torch.arange(3), torch.tensor(targets)], **TOLERANCE)
        assert float(delta.abs().max()) > 1e-2


@pytest.mark.parametrize("method", list(METHODS))
def test_forward_function_returning_a_tensor_or_an_output_object(model, batch, method):
    args = (batch.attention_mask,)
    direct = DecompX(model, **METHODS[method]).attribute(batch.input_ids, target=2, additional_forward_args=args)

    def logits_only(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    def output_object(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask)

    for forward_func in (logits_only, output_object):
        explainer = DecompX(forward_func, model=model, **METHODS[method])
        attributions, delta = explainer.attribute(
            batch.input_ids, target=2, additional_forward_args=args, return_convergence_delta=True
        )
        torch.testing.assert_close(attributions, direct, **TOLERANCE)
        if method == "exact":
            torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=1e-5)


def test_plain_function_without_model_raises(model):
    with pytest.raises(ValueError, match="model="):
        DecompX(lambda input_ids: model(input_ids).logits)


@pytest.mark.parametrize("method", list(METHODS))
def test_works_inside_no_grad(model, batch, method):
    explainer = DecompX(model, **METHODS[method])
    args = (batch.attention_mask,)
    outside = explainer.attribute(batch.input_ids, target=[0, 1, 2], additional_forward_args=args)
    with torch.no_grad():
        inside = explainer.attribute(batch.input_ids, target=[0, 1, 2], additional_forward_args=args)
        inside_out = explainer.decompose(batch.input_ids, additional_forward_args=args)
    torch.testing.assert_close(inside, outside, **TOLERANCE)
    assert inside_out.attributions.shape == (3, batch.input_ids.shape[1], NUM_LABELS)
    assert not inside.requires_grad


@pytest.mark.parametrize("method", list(METHODS))
def test_results_are_on_the_models_device_and_detached(model, batch, method):
    explainer = DecompX(model, **METHODS[method])
    device = next(model.parameters()).device
    attributions, delta = explainer.attribute(
        batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,), return_convergence_delta=True
    )
    out = explainer.decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    for tensor in (attributions, delta, out.attributions, out.logits, out.bias):
        assert tensor.device == device
        assert not tensor.requires_grad
        assert tensor.dtype == torch.float32


@pytest.mark.parametrize("method", list(METHODS))
def test_without_head_attribute_returns_nonnegative_norms(model, batch, method):
    explainer = DecompX(model, include_head=False, **METHODS[method])
    args = (batch.attention_mask,)
    norms = explainer.attribute(batch.input_ids, additional_forward_args=args)  # target None is fine
    assert norms.shape == batch.input_ids.shape
    assert bool((norms >= 0).all())
    out = explainer.decompose(batch.input_ids, additional_forward_args=args)
    torch.testing.assert_close(norms, out.attributions, **TOLERANCE)
    # each real token's score is the L2 norm of its piece of the pooled representation
    expected = torch.linalg.vector_norm(out.pooled, dim=-1) * batch.attention_mask
    torch.testing.assert_close(norms, expected, **TOLERANCE)
    assert float(norms[batch.attention_mask.bool()].min()) > 0


def test_captum_text_visualization_renders(model, batch):
    pytest.importorskip(
        "IPython", reason="captum.attr.visualization.visualize_text needs IPython (pip install ipython)"
    )
    from captum.attr import visualization

    explainer = DecompX(model)
    args = (batch.attention_mask,)
    logits = own_logits(model, batch)
    predicted = logits.argmax(-1)
    attributions, delta = explainer.attribute(
        batch.input_ids, target=predicted, additional_forward_args=args, return_convergence_delta=True
    )
    records = []
    for row, length in enumerate(batch.lengths):
        scores = attributions[row, :length]
        tokens = [f"tok{int(i)}" for i in batch.input_ids[row, :length]]
        records.append(
            visualization.VisualizationDataRecord(
                scores / scores.abs().max(),
                float(torch.softmax(logits[row], -1).max()),
                int(predicted[row]),
                int(predicted[row]),
                int(predicted[row]),
                float(scores.sum()),
                tokens,
                float(delta[row]),
            )
        )
    html = visualization.visualize_text(records)
    rendered = html.data
    for row, length in enumerate(batch.lengths):
        for token_id in batch.input_ids[row, :length]:
            assert f"tok{int(token_id)}" in rendered


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_matches_cpu(batch, method):
    cpu_model = make_model("bert", seed=0)
    cuda_model = make_model("bert", seed=0).cuda()
    args = (batch.attention_mask,)
    cpu = DecompX(cpu_model, **METHODS[method]).decompose(batch.input_ids, additional_forward_args=args)
    explainer = DecompX(cuda_model, **METHODS[method])
    cuda = explainer.decompose(batch.input_ids.cuda(), additional_forward_args=(batch.attention_mask.cuda(),))
    assert cuda.attributions.device.type == "cuda"
    assert_close_to_scale(cuda.logits.cpu(), cpu.logits, rel=1e-4, what="logits")
    assert_close_to_scale(cuda.attributions.cpu(), cpu.attributions, rel=1e-4, what="attributions")
    assert_close_to_scale(cuda.bias.cpu(), cpu.bias, rel=1e-4, what="bias share")
    attributions = explainer.attribute(batch.input_ids.cuda(), target=1, additional_forward_args=(batch.attention_mask.cuda(),))
    assert attributions.device.type == "cuda"
    assert_close_to_scale(attributions.cpu(), cpu.attributions[..., 1], rel=1e-4, what="attribute on CUDA")
