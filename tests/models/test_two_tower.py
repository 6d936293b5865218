"""CLIP and SigLIP: each tower decomposed with the other held fixed, and both at once.

Values are checked against the literal spec (``tests/literal_spec.py``, which imports nothing from
the engine) on float64 models whose every parameter was redrawn; completeness against the model's
own logits; the fast path against the exact one without biases; the interaction matrix against
the model's logits and the one-sided attributions.
"""

from __future__ import annotations

import warnings

import literal_spec as spec
import pytest
import torch
import transformers
from support import two_tower as tt
from transformers import CLIPModel, SiglipModel

from captum_decompx import DecompX, image_text_interaction
from captum_decompx.testing import randomize_parameters

TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5


def _image_forward(model):
    return lambda pixels, ids, mask=None: model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits_per_image


def _text_forward(model):
    return lambda ids, pixels, mask=None: model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits_per_text


def _quiet(explainer: DecompX, method: str, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(explainer, method)(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Values: the literal spec


def _literal_clip(model, images, ids, mask, side: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(examples, positions, classes) literal contributions and (examples, classes) literal logits."""
    eos_rows = [int((row == tt.EOS).nonzero()[0]) for row in ids]
    texts = [
        spec.real_forward(
            tt.clip_text_weights(model, [spec.affine_of(model.text_projection)]),
            tt.text_embeddings(model.text_model, ids[t]),
            eos_rows[t],
            keys=mask[t].bool(),
        ).logits
        for t in range(ids.shape[0])
    ]
    image_head = [spec.affine_of(model.visual_projection)]
    image_embeddings = [tt.clip_image_embeddings(model, image) for image in images]
    if side == "image":
        weights = tt.clip_image_weights(model, image_head + [tt.contrastive_step(model, torch.stack(texts), with_bias=False)])
        runs = [(embedding, 0, None) for embedding in image_embeddings]
    else:
        image_weights = tt.clip_image_weights(model, image_head)
        others = torch.stack([spec.real_forward(image_weights, embedding, 0).logits for embedding in image_embeddings])
        head = [spec.affine_of(model.text_projection), tt.contrastive_step(model, others, with_bias=False)]
        weights = tt.clip_text_weights(model, head)
        runs = [(tt.text_embeddings(model.text_model, ids[t]), eos_rows[t], mask[t].bool()) for t in range(ids.shape[0])]
    return _literal(weights, runs, mode)


def _literal_siglip(model, images, ids, side: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    last = ids.shape[1] - 1
    text_embeddings = [tt.text_embeddings(model.text_model, row) for row in ids]
    image_embeddings = [tt.siglip_image_embeddings(model, image) for image in images]
    texts = torch.stack([spec.real_forward(tt.siglip_text_weights(model, []), e, last).logits for e in text_embeddings])
    image_alone = tt.siglip_image_weights(model, [])
    others = torch.stack([spec.real_forward(image_alone, e, 0).logits for e in image_embeddings])
    if side == "image":
        weights = tt.siglip_image_weights(model, [tt.contrastive_step(model, texts, with_bias=True)])
        runs = [(embedding, 0, None) for embedding in image_embeddings]
    else:
        weights = tt.siglip_text_weights(model, [tt.contrastive_step(model, others, with_bias=True)])
        runs = [(embedding, last, None) for embedding in text_embeddings]
    return _literal(weights, runs, mode)


def _literal(weights, runs, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    contributions, logits = [], []
    for embedding, row, keys in runs:
        trace = spec.real_forward(weights, embedding, row, keys=keys)
        contributions.append(spec.decompose(weights, embedding, trace, row, mode=mode).contributions)
        logits.append(trace.logits)
    return torch.stack(contributions), torch.stack(logits)


@pytest.mark.parametrize("mode", ["rule", "drop"])
@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize("side", ["image", "text"])
def test_each_side_matches_the_literal_spec(family, side, mode):
    default = torch.get_default_dtype()
    if family == "clip" and TRANSFORMERS_4:
        # transformers 4.x builds CLIP's causal mask with torch.full(..., finfo(float64).min) in the
        # default dtype, which overflows float32: the float64 model runs only with a float64 default.
        torch.set_default_dtype(torch.float64)
    try:
        _each_side_matches_the_literal_spec(family, side, mode)
    finally:
        torch.set_default_dtype(default)


def _each_side_matches_the_literal_spec(family, side, mode):
    images = tt.pixels(2, seed=3)
    if family == "clip":
        model = tt.clip_float64(seed=11)
        ids, mask = tt.clip_texts()
        expected, logits = _literal_clip(model, images, ids, mask, side, mode)
    else:
        model = tt.siglip_float64(seed=12)
        ids, mask = tt.siglip_texts(), None
        expected, logits = _literal_siglip(model, images, ids, side, mode)
    with torch.no_grad():
        output = model(pixel_values=images, input_ids=ids, attention_mask=mask)
    real = output.logits_per_image if side == "image" else output.logits_per_text
    spec.assert_matches(logits, real, 1.0, "the literal forward pass reproduces the model", rel=1e-6)
    forward = _image_forward(model) if side == "image" else _text_forward(model)
    inputs, others = (images, (ids, mask)) if side == "image" else (ids, (images, mask))
    explainer = DecompX(forward, model=model, algorithm="exact", include_biases=mode == "rule")
    result = _quiet(explainer, "decompose", inputs, others)
    scale = float(expected.abs().max())
    spec.assert_matches(result.attributions, expected, scale, f"{family} {side} side ({mode})", rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Completeness, fast = exact, both towers at once (float32, parameters redrawn)


@pytest.fixture(scope="module")
def clip32():
    model = randomize_parameters(CLIPModel(tt.clip_config()), seed=5)
    with torch.no_grad():
        model.logit_scale.fill_(1.5)
    return model


@pytest.fixture(scope="module")
def siglip32():
    return randomize_parameters(SiglipModel(tt.siglip_config()), seed=6)


def _inputs(model, side: str):
    images = tt.pixels(2, seed=1, dtype=torch.float32)
    if isinstance(model, CLIPModel):
        ids, mask = tt.clip_texts()
    else:
        ids, mask = tt.siglip_texts(), None
    if side == "image":
        return _image_forward(model), images, (ids, mask), [2, 0]
    return _text_forward(model), ids, (images, mask), [1, 0, 1]


@pytest.mark.parametrize("side", ["image", "text"])
@pytest.mark.parametrize("family", ["clip32", "siglip32"])
def test_attributions_sum_to_the_logit_and_fast_equals_exact_without_biases(family, side, request):
    model = request.getfixturevalue(family)
    forward, inputs, others, target = _inputs(model, side)
    with torch.no_grad():
        output = forward(inputs, *others)
    explained = output[torch.arange(output.shape[0]), torch.tensor(target)]
    exact = DecompX(forward, model=model)
    with pytest.warns(UserWarning, match="norms of the cosine similarity frozen"):
        scores, delta = exact.attribute(inputs, target=target, additional_forward_args=others, return_convergence_delta=True)
    positions = 1 + (tt.IMAGE // tt.PATCH) ** 2 if side == "image" and family == "clip32" else None
    assert scores.shape[1] == (positions or scores.shape[1])
    assert float(delta.abs().max()) < 1e-5 * (1 + float(explained.abs().max()))
    assert torch.allclose(scores.sum(-1), explained, atol=1e-5)
    no_bias = _quiet(DecompX(forward, model=model, algorithm="exact", include_biases=False), "attribute", inputs, target, others)
    fast = _quiet(DecompX(forward, model=model, algorithm="fast", include_biases=False), "attribute", inputs, target, others)
    assert torch.allclose(fast, no_bias, atol=1e-5), (fast - no_bias).abs().max()
    assert not torch.allclose(no_bias, scores, atol=1e-3)  # the biases matter on these models


@pytest.mark.parametrize("family", ["clip32", "siglip32"])
def test_fast_decompose_gives_the_bias_share_of_every_text(family, request):
    model = request.getfixturevalue(family)
    forward, inputs, others, _ = _inputs(model, "image")
    fast = _quiet(DecompX(forward, model=model, include_biases=False), "decompose", inputs, others)
    exact = _quiet(DecompX(forward, model=model, algorithm="exact", include_biases=False), "decompose", inputs, others)
    assert torch.allclose(fast.attributions, exact.attributions, atol=1e-5)
    assert torch.allclose(fast.bias, exact.bias, atol=1e-5)
    assert torch.allclose(fast.attributions.sum(1) + fast.bias, exact.logits, atol=1e-5)


@pytest.mark.parametrize("include_biases", [True, False])
@pytest.mark.parametrize("family", ["clip32", "siglip32"])
def test_the_interaction_matrix_sums_to_the_logit(family, include_biases, request):
    model = request.getfixturevalue(family)
    _, images, (ids, mask), _ = _inputs(model, "image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = image_text_interaction(model, images, ids, mask, include_biases=include_biases)
        with torch.no_grad():
            logits = model(pixel_values=images, input_ids=ids, attention_mask=mask).logits_per_image
    assert result.matrix.shape == (2, 3, result.image_pieces.shape[1], ids.shape[1])
    assert torch.allclose(result.matrix.sum((2, 3)) + result.bias, logits, atol=1e-5)
    if not include_biases:
        return
    # Its row sums are the image side's attributions, its column sums the text side's (CLIP has
    # no logit_bias; SigLIP's is the whole bias term, spread by the rule on the one-sided calls).
    image_side = _quiet(DecompX(_image_forward(model), model=model), "decompose", images, (ids, mask)).attributions
    text_side = _quiet(DecompX(_text_forward(model), model=model), "decompose", ids, (images, mask)).attributions
    if isinstance(model, CLIPModel):
        assert torch.allclose(result.matrix.sum(3).permute(0, 2, 1), image_side, atol=1e-5)
        assert torch.allclose(result.matrix.sum(2).permute(1, 2, 0), text_side, atol=1e-5)
    else:
        assert torch.allclose(result.bias, model.logit_bias.detach().expand_as(result.bias), atol=1e-6)


def test_the_interaction_refuses_a_one_tower_model():
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTForImageClassification(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=8, patch_size=4)
    ).eval()
    with pytest.raises(ValueError, match="two-tower image-text model"):
        image_text_interaction(vit, torch.randn(1, 3, 8, 8), torch.zeros(1, 3, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# Bad input


def test_a_text_without_its_end_of_text_token_is_refused(clip32):
    images = tt.pixels(1, seed=1, dtype=torch.float32)
    ids = torch.tensor([[tt.BOS, 5, 7, 9]])  # truncated: no EOS
    explainer = DecompX(_text_forward(clip32), model=clip32)
    with pytest.raises(ValueError, match=r"Text example\(s\) \[0\] have no end-of-text token"):
        _quiet(explainer, "attribute", ids, 0, (images, None))
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in clip32.modules())
    assert {clip32.config.text_config._attn_implementation, clip32.config.vision_config._attn_implementation} == {"sdpa"}


def test_a_forward_returning_embeddings_is_refused(clip32):
    images = tt.pixels(1, seed=1, dtype=torch.float32)
    ids, mask = tt.clip_texts()
    embeds = DecompX(
        lambda p, i, m: clip32(pixel_values=p, input_ids=i, attention_mask=m).image_embeds @ torch.ones(8, 2), model=clip32
    )
    with pytest.raises(NotImplementedError, match="image_embeds or text_embeds"):
        _quiet(embeds, "attribute", images, 0, (ids, mask))

    def image_features(p):
        features = clip32.get_image_features(pixel_values=p)  # a tensor on transformers 4.x, an output on 5.x
        return getattr(features, "pooler_output", features)

    one_tower = DecompX(image_features, model=clip32)
    with pytest.raises(ValueError, match="never ran the other tower"):
        _quiet(one_tower, "attribute", images, 0)


def test_images_of_the_wrong_channels_or_size_are_refused(clip32):
    ids, mask = tt.clip_texts()
    explainer = DecompX(_image_forward(clip32), model=clip32)
    with pytest.raises(ValueError, match="takes images with 3 channel"):
        _quiet(explainer, "attribute", torch.randn(1, 1, 8, 8), 0, (ids, mask))
    with pytest.raises(ValueError, match="doesn't match model"):  # the model's own refusal
        _quiet(explainer, "attribute", torch.randn(1, 3, 12, 12), 0, (ids, mask))
    with pytest.raises(ValueError, match="pixel_values of shape"):
        _quiet(explainer, "attribute", torch.randn(3, 8, 8), 0, (ids, mask))


def test_another_image_size_is_decomposed_with_interpolated_positions(clip32, siglip32):
    ids, mask = tt.clip_texts()
    big = torch.randn(1, 3, 12, 12)

    def forward(pixels, ids, mask):
        return clip32(pixel_values=pixels, input_ids=ids, attention_mask=mask, interpolate_pos_encoding=True).logits_per_image

    scores, delta = _quiet(DecompX(forward, model=clip32), "attribute", big, 0, (ids, mask), return_convergence_delta=True)
    assert scores.shape == (1, 1 + 9) and float(delta.abs().max()) < 1e-5
    with pytest.raises(RuntimeError, match="must match the size"):  # SigLIP's own refusal without interpolation
        _quiet(DecompX(_image_forward(siglip32), model=siglip32), "attribute", big, 0, (tt.siglip_texts(),))


def test_without_the_feed_forward_networks_fast_equals_exact_on_siglip(siglip32):
    forward, inputs, others, target = _inputs(siglip32, "image")
    options = dict(include_biases=False, include_ffn=False)
    exact = _quiet(DecompX(forward, model=siglip32, algorithm="exact", **options), "attribute", inputs, target, others)
    fast = _quiet(DecompX(forward, model=siglip32, algorithm="fast", **options), "attribute", inputs, target, others)
    assert torch.allclose(fast, exact, atol=1e-5), (fast - exact).abs().max()


def test_without_the_head_the_exact_path_scores_siglip_image_pieces_and_the_fast_path_says_why_not(siglip32):
    forward, inputs, others, _ = _inputs(siglip32, "image")
    norms = _quiet(DecompX(forward, model=siglip32, algorithm="exact", include_head=False), "attribute", inputs, None, others)
    assert norms.shape == (2, (tt.IMAGE // tt.PATCH) ** 2) and bool((norms >= 0).all())
    fast = DecompX(forward, model=siglip32, include_head=False, include_biases=False, algorithm="fast")
    with pytest.raises(RuntimeError, match="algorithm='exact' with include_head=False"):
        _quiet(fast, "attribute", inputs, None, others)


def test_a_legacy_clip_config_pools_at_the_largest_id():
    """Configs made before transformers fixed CLIP's eos_token_id (it reads 2) pool at the largest id."""
    config = tt.clip_config()
    config.text_config.eos_token_id = 2
    model = randomize_parameters(CLIPModel(config), seed=7)
    ids = torch.tensor([[tt.BOS, 5, 40, 9, 2, 3], [tt.BOS, 3, 4, 45, 7, 8]])  # the largest ids sit at 2 and 3
    images = tt.pixels(1, seed=2, dtype=torch.float32)
    scores, delta = _quiet(
        DecompX(_text_forward(model), model=model), "attribute", ids, 0, (images, None), return_convergence_delta=True
    )
    assert float(delta.abs().max()) < 1e-5
    assert scores[0, 3:].abs().max() == 0 and scores[1, 4:].abs().max() == 0  # causal: nothing after the pooled token
