"""DecompX explains what the forward function returns, or the logit it refers to (with a warning),
or refuses; and the rest of Captum's contract (targets of every rank, NoiseTunnel, the convergence
delta's signature, grad modes, autocast, Captum's metrics).

Every expected value is built by hand from the per-class decomposition of the model's plain
logits (``DecompX(model).decompose``: attributions (B, N, C) and bias (B, C), whose completeness
against the model's own logits ``engine/test_completeness.py`` checks), combined with the linear map the
forward function applies; never from DecompX's own output for the post-processing forward.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from support.classifiers import NUM_LABELS, assert_close_to_scale, cached_model, make_padded_batch

from captum_decompx import DecompX

ALGORITHMS = {"exact": dict(), "fast": dict(include_biases=False)}


@pytest.fixture(scope="module")
def model():
    return cached_model("bert", seed=0)


@pytest.fixture(scope="module")
def batch():
    return make_padded_batch()


@pytest.fixture(scope="module")
def per_class(model, batch):
    """The per-class decomposition of the plain logits, for each algorithm: (A (B, N, C), bias (B, C), logits (B, C))."""
    result = {}
    for name, options in ALGORITHMS.items():
        out = DecompX(model, **options).decompose(batch.input_ids, (batch.attention_mask,))
        result[name] = (out.attributions, out.bias, out.logits)
    with torch.no_grad():
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(result["exact"][2], own)  # the decomposed logits are the model's own
    return result


def explain(model, batch, forward, algorithm="exact", **kwargs):
    explainer = DecompX(
        lambda ids, mask: forward(model(input_ids=ids, attention_mask=mask).logits), model=model, **ALGORITHMS[algorithm]
    )
    return explainer.attribute(
        batch.input_ids, additional_forward_args=(batch.attention_mask,), return_convergence_delta=True, **kwargs
    )


def forward_output(model, batch, forward):
    with torch.no_grad():
        return forward(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)


# --------------------------------------------------------------------------------------------
# Linear tails: exact, and complete against the forward function's output

ROWS = torch.arange(3)
LINEAR = {
    # name: (forward's tail, target, the (B, C) weights of the logits it selects)
    "reorder": (lambda z: z[:, [2, 0, 1]], [0, 1, 2], torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0]])),
    "slice": (lambda z: z[:, 1:], 1, torch.tensor([[0, 0, 1]] * 3)),
    "temperature": (lambda z: z / 0.7, 1, torch.tensor([[0, 1 / 0.7, 0]] * 3)),
    "scale-tuple-target": (lambda z: 3 * z, (2,), torch.tensor([[0, 0, 3]] * 3)),
    "one-dimensional": (lambda z: z[:, 2], None, torch.tensor([[0, 0, 1]] * 3)),
    "difference": (lambda z: z[:, 1] - z[:, 0], None, torch.tensor([[-1, 1, 0]] * 3)),
    "sum-list-of-tuples": (
        lambda z: torch.stack([z[:, 0] + z[:, 2], z[:, 1]], 1),
        [(0,), (1,), (0,)],
        torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]]),
    ),
    "dot-product": (lambda z: z @ torch.tensor([0.5, -2.0, 1.5]), None, torch.tensor([[0.5, -2.0, 1.5]] * 3)),
    "masked-mean": (lambda z: (z * torch.tensor([1.0, 0.0, 1.0])).sum(-1) / 2, None, torch.tensor([[0.5, 0, 0.5]] * 3)),
    "centred": (lambda z: z - z.mean(-1, keepdim=True), 0, torch.tensor([[2 / 3, -1 / 3, -1 / 3]] * 3)),
}


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("case", list(LINEAR))
def test_a_linear_tail_is_explained_exactly(model, batch, per_class, case, algorithm):
    tail, target, weights = LINEAR[case]
    attributions, bias, _ = per_class[algorithm]
    weights = weights.float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores, delta = explain(model, batch, tail, algorithm, target=target)
    expected = torch.einsum("bnc,bc->bn", attributions, weights)
    assert_close_to_scale(scores, expected, what=case)
    # Complete against what the forward function returned for the target.
    output = forward_output(model, batch, tail)
    if output.dim() == 2:
        index = {
            list: lambda t: torch.tensor([t_[0] if isinstance(t_, tuple) else t_ for t_ in t]),
            tuple: lambda t: torch.full((3,), t[0]),
            int: lambda t: torch.full((3,), t),
        }[type(target)](target)
        output = output[ROWS, index]
    bias_share = (weights * bias).sum(-1)
    torch.testing.assert_close(scores.sum(-1) + bias_share, output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(delta, scores.sum(-1) - output, rtol=1e-5, atol=1e-5)
    if algorithm == "exact":
        assert float(delta.abs().max()) < 1e-5


# --------------------------------------------------------------------------------------------
# Non-linear tails: the logit the output refers to, with a warning; or a refusal

REFERRED = {
    # name: (tail, target, the class whose logit is explained per example)
    "sliced-softmax": (lambda z: torch.softmax(z, -1)[:, 1:2], 0, [1, 1, 1]),
    "softmax": (lambda z: torch.softmax(z, -1), 2, [2, 2, 2]),
    "log-softmax": (lambda z: torch.log_softmax(z, -1), [0, 2, 1], [0, 2, 1]),
    "softmax-temperature": (lambda z: torch.softmax(z / 0.7, -1), 1, [1, 1, 1]),
    "sigmoid-of-a-difference": (lambda z: torch.sigmoid(z[:, 2] - z[:, 0]), None, [2, 2, 2]),
    "offset": (lambda z: z + 1.0, 0, [0, 0, 0]),
}


@pytest.mark.parametrize("case", list(REFERRED))
def test_a_softmax_like_tail_explains_the_logit_it_refers_to_with_a_warning(model, batch, per_class, case):
    tail, target, classes = REFERRED[case]
    attributions, _, logits = per_class["exact"]
    with pytest.warns(UserWarning, match=rf"class {classes[0]}\b.*convergence delta is measured against it.*Return the logits"):
        scores, delta = explain(model, batch, tail, target=target)
    expected = attributions[ROWS, :, torch.tensor(classes)]
    assert_close_to_scale(scores, expected, what=case)
    torch.testing.assert_close(scores.sum(-1), logits[ROWS, torch.tensor(classes)], rtol=1e-5, atol=1e-5)
    assert float(delta.abs().max()) < 1e-5  # measured against that logit


def test_the_issues_sliced_softmax_gives_the_positive_class_not_the_negative(model, batch, per_class):
    """softmax(...)[:, 1:2] with target=0 is P(class 1): the explanation is of logit 1, not logit 0."""
    attributions = per_class["exact"][0]
    with pytest.warns(UserWarning, match="class 1"):
        scores, _ = explain(model, batch, lambda z: torch.softmax(z, -1)[:, 1:2], target=0)
    assert not torch.allclose(scores, attributions[..., 0], atol=1e-3)
    assert_close_to_scale(scores, attributions[..., 1])


def test_a_non_linear_tail_of_several_classes_is_refused_with_the_fix(model, batch):
    # 1 - p2: raised by the logits of classes 0 and 1 both, so no single class is referred to.
    with pytest.raises(ValueError, match=r"not linear.*no single class.*Return those from the forward function.*target="):
        explain(model, batch, lambda z: torch.softmax(z, -1)[:, :2].sum(-1))


def test_an_output_detached_from_the_model_is_refused(model, batch):
    with pytest.raises(RuntimeError, match=r"does not depend on the model's output.*without \.detach\(\)"):
        explain(model, batch, lambda z: z.detach(), target=1)


def test_a_forward_that_runs_the_model_twice_is_still_refused(model, batch):
    def twice(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits + model(input_ids=ids, attention_mask=mask).logits

    with pytest.raises(RuntimeError, match="2 times"):
        DecompX(twice, model=model).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))


def test_decompose_returns_the_models_own_logits_whatever_the_forward_does(model, batch, per_class):
    out = DecompX(lambda ids, mask: torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1), model=model).decompose(
        batch.input_ids, (batch.attention_mask,)
    )
    attributions, _, logits = per_class["exact"]
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.attributions, attributions)


# --------------------------------------------------------------------------------------------
# Targets of every rank


def test_a_one_dimensional_output_takes_no_class(model, batch):
    with pytest.raises(ValueError, match=r"one value per example.*target=None"):
        explain(model, batch, lambda z: z[:, 2], target=1)


def test_a_tuple_target_is_an_index_as_in_captum(model, batch, per_class):
    attributions = per_class["exact"][0]
    scores, _ = explain(model, batch, lambda z: z, target=(1,))
    assert_close_to_scale(scores, attributions[..., 1])
    scores, _ = explain(model, batch, lambda z: z, target=[(1,), (0,), (2,)])
    assert_close_to_scale(scores, attributions[ROWS, :, torch.tensor([1, 0, 2])])


# --------------------------------------------------------------------------------------------
# Per-position outputs: a causal LM (the decomposition covers the last position)


@pytest.fixture(scope="module")
def language_model():
    import transformers as tf

    torch.manual_seed(1)
    config = tf.GPT2Config(vocab_size=15, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1)
    model = tf.GPT2LMHeadModel(config).eval()
    ids = torch.tensor([[2, 3, 4, 5, 6, 7]])
    last = DecompX(lambda i: model(input_ids=i).logits[:, -1, :], model=model).decompose(ids)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(last.logits, logits[:, -1])
    return model, ids, last.attributions, logits


@pytest.mark.parametrize(
    "target",
    [(5, 3), (-1, 3), [(5, 3)], torch.tensor([5, 3]), torch.tensor([[5, 3]])],
    ids=["tuple", "negative-position", "list-of-tuples", "tensor", "tensor-per-example"],
)
def test_a_position_and_class_target_on_a_three_dimensional_output(language_model, target):
    model, ids, attributions, _ = language_model
    scores, delta = DecompX(lambda i: model(input_ids=i).logits, model=model).attribute(
        ids, target=target, return_convergence_delta=True
    )
    assert_close_to_scale(scores, attributions[..., 3])
    assert float(delta.abs().max()) < 1e-5


def test_max_over_positions_explains_the_position_it_selects(language_model):
    """Captum's SQuAD tutorial's ``pred.max(1).values``: exact when the selected position is the
    one the decomposition covers (the last), a clear "not supported yet" otherwise."""
    model, ids, attributions, logits = language_model
    argmax = logits[0].argmax(0)  # (vocab,): the position of each token's largest logit
    at_last = int((argmax == ids.shape[1] - 1).nonzero()[0])
    elsewhere = int((argmax != ids.shape[1] - 1).nonzero()[0])
    explainer = DecompX(lambda i: model(input_ids=i).logits.max(1).values, model=model)
    scores, delta = explainer.attribute(ids, target=at_last, return_convergence_delta=True)
    assert_close_to_scale(scores, attributions[..., at_last])
    assert float(delta.abs().max()) < 1e-5
    with pytest.raises(NotImplementedError, match=r"position .* not supported yet.*logits\[:, -1, :\]"):
        explainer.attribute(ids, target=elsewhere)


def test_an_incomplete_target_on_a_three_dimensional_output_says_what_to_pass(language_model):
    model, ids, _, _ = language_model
    with pytest.raises(ValueError, match=r"shape \(batch, 6, 15\).*target=\(position, class\)"):
        DecompX(lambda i: model(input_ids=i).logits, model=model).attribute(ids, target=3)


# --------------------------------------------------------------------------------------------
# Captum's wrappers, delta signature, grad modes, autocast, metrics


def embeddings_forward(model):
    return lambda embeds, mask: model(inputs_embeds=embeds, attention_mask=mask).logits


def test_noise_tunnel_over_an_embeddings_forward(model, batch, per_class):
    embeds = model.get_input_embeddings()(batch.input_ids).detach()
    explainer = DecompX(embeddings_forward(model), model=model)
    tunnel = NoiseTunnel(explainer)
    without_noise = tunnel.attribute(embeds, nt_samples=2, stdevs=0.0, target=1, additional_forward_args=(batch.attention_mask,))
    assert_close_to_scale(without_noise, per_class["exact"][0][..., 1])  # the mean of two identical runs
    noisy, delta = tunnel.attribute(
        embeds,
        nt_samples=3,
        stdevs=0.05,
        target=1,
        additional_forward_args=(batch.attention_mask,),
        return_convergence_delta=True,
    )
    assert noisy.shape == batch.input_ids.shape and delta.shape == (9,)
    assert float(delta.abs().max()) < 1e-4
    assert not torch.allclose(noisy, without_noise, atol=1e-4)


def test_compute_convergence_delta_takes_captums_signature(model, batch):
    explainer = DecompX(
        lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits / 0.7, model=model, include_biases=False
    )
    args = (batch.attention_mask,)
    attributions, delta = explainer.attribute(
        batch.input_ids, target=2, additional_forward_args=args, return_convergence_delta=True
    )
    captum_style = explainer.compute_convergence_delta(attributions, None, batch.input_ids, 2, args)
    torch.testing.assert_close(captum_style, delta)
    assert float(delta.abs().max()) > 1e-2  # minus the biases' share: a real comparison
    with pytest.raises(ValueError, match="no baseline"):
        explainer.compute_convergence_delta(attributions, torch.zeros_like(batch.input_ids), batch.input_ids, 2, args)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_grad_modes(model, batch, per_class, algorithm, mode):
    explainer = DecompX(model, **ALGORITHMS[algorithm])
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        ids, mask = batch.input_ids.clone(), batch.attention_mask.clone()  # inference tensors under inference_mode
        scores = explainer.attribute(ids, target=[0, 1, 2], additional_forward_args=(mask,))
        out = explainer.decompose(ids, (mask,))
    assert_close_to_scale(scores, per_class[algorithm][0][ROWS, :, ROWS])
    torch.testing.assert_close(out.attributions, per_class[algorithm][0])


def test_autocast_decomposes_in_float32_and_warns(model, batch, per_class):
    explainer = DecompX(model)
    with pytest.warns(UserWarning, match=r"autocast.*decomposes it in torch\.float32.*bfloat16 precision"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores, delta = explainer.attribute(
                batch.input_ids, target=1, additional_forward_args=(batch.attention_mask,), return_convergence_delta=True
            )
            autocast_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert scores.dtype == torch.float32 and delta.dtype == torch.float32
    # Complete against the autocast pass to bfloat16 precision; close to the float32 explanation.
    torch.testing.assert_close(scores.sum(-1), autocast_logits[:, 1].float(), rtol=0, atol=5e-2)
    assert_close_to_scale(scores, per_class["exact"][0][..., 1], rel=5e-2)
    assert torch.is_autocast_enabled("cpu") is False


def test_captum_metrics_with_an_embeddings_forward(model, batch):
    """The README's recipe: sensitivity_max calls DecompX as it is; infidelity needs attributions
    of the inputs' shape, so each token's share is spread over its embedding (dot-product with the
    token's removal perturbation gives back the share)."""
    embeds = model.get_input_embeddings()(batch.input_ids).detach()
    forward = embeddings_forward(model)
    explainer = DecompX(forward, model=model)
    args = (batch.attention_mask,)
    scores = explainer.attribute(embeds, target=1, additional_forward_args=args)
    per_dimension = scores.unsqueeze(-1) * embeds / embeds.pow(2).sum(-1, keepdim=True)
    torch.testing.assert_close((per_dimension * embeds).sum(-1), scores)
    generator = torch.Generator().manual_seed(0)

    def drop_tokens(inputs):
        dropped = (torch.rand(inputs.shape[:2], generator=generator) < 0.3).to(inputs.dtype).unsqueeze(-1)
        return inputs * dropped, inputs * (1 - dropped)

    value = infidelity(forward, drop_tokens, embeds, per_dimension, additional_forward_args=args, target=1, n_perturb_samples=4)
    assert value.shape == (3,) and bool(torch.isfinite(value).all())
    sensitivity = sensitivity_max(
        explainer.attribute, embeds, target=1, additional_forward_args=args, n_perturb_samples=3, perturb_radius=0.02
    )
    assert sensitivity.shape == (3,) and bool((sensitivity > 0).all())


def test_the_algorithm_keyword_is_the_only_name_of_the_choice(model):
    assert DecompX(model, include_biases=False, algorithm="exact").algorithm == "exact"
    assert DecompX(model, include_biases=False).algorithm == "fast"
    with pytest.raises(TypeError, match=r"algorithm='fast'"):  # the former name says the new one
        DecompX(model, include_biases=False, method="fast")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        DecompX(model, path="fast")
    with pytest.raises(ValueError, match="algorithm="):
        DecompX(model, algorithm="quick")


assert NUM_LABELS == 3  # the LINEAR and REFERRED tables are written for three classes


def test_the_models_bound_forward_is_the_model_itself(model, batch, per_class):
    """``model.forward`` runs no module hook: its output is taken as the model's output."""
    for forward in (model.forward, model):
        scores, delta = DecompX(forward, model=model).attribute(
            batch.input_ids, target=2, additional_forward_args=(batch.attention_mask,), return_convergence_delta=True
        )
        assert_close_to_scale(scores, per_class["exact"][0][..., 2])
        assert float(delta.abs().max()) < 1e-5


def test_a_forward_that_bypasses_the_models_call_is_refused(model, batch):
    def parts(ids, mask):  # runs the submodules, never model(...) itself
        return model.classifier(model.bert(input_ids=ids, attention_mask=mask).pooler_output)

    with pytest.raises(RuntimeError, match=r"did not call `model`.*itself"):
        DecompX(parts, model=model).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))


def test_the_fast_algorithm_combines_every_class_in_one_backward_pass(language_model):
    """A combination of all 15 classes (centred logits) is one weighted backward pass of the frozen
    forward pass, equal to the exact algorithm's per-class decomposition combined the same way."""
    model, ids, _, _ = language_model
    centred = lambda i: (lambda z: z - z.mean(-1, keepdim=True))(model(input_ids=i).logits[:, -1, :])  # noqa: E731
    exact = DecompX(centred, model=model, include_biases=False, algorithm="exact").attribute(ids, target=3)
    fast = DecompX(centred, model=model, include_biases=False).attribute(ids, target=3)
    assert_close_to_scale(fast, exact)
    per_class = DecompX(model, include_biases=False, algorithm="exact").decompose(ids).attributions  # (B, N, C)
    by_hand = per_class[..., 3] - per_class.mean(-1)
    assert_close_to_scale(fast, by_hand)
