"""The vision classifiers (DeiT, BEiT / Data2VecVision, DINOv2) against the literal spec, and their
battery: the Captum form, completeness against the forward function's output, fast = exact
without biases, the model left as it was found, and clear refusals of bad images.

The literal version (``literal_spec.py``) recomputes each model's forward pass from its weights in
float64 (checked against the model's own logits to 1e-9), read in the module layout of transformers
5.x or 4.x (whichever the model has, with the softmax dtype that version's eager attention uses),
with what these models add written out:
DeiT's distillation token and its teacher's two averaged classifiers, BEiT's relative position bias
(recomputed from its table), its layer scales and its mean pooling of the patches with a LayerNorm,
DINOv2's layer scales, SwiGLU unit and CLS-and-patch-mean classifier input. The engine is reached
through ``DecompX`` only. The embedding block's output (patches, CLS and distillation tokens,
interpolated position embeddings) is where both start: it is read from the model by a hook.
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
import transformers as tf
from torch import nn

from captum_decompx import DecompX
from captum_decompx.testing import randomize_parameters

MODES = [
    pytest.param(True, "exact", id="biases-decomposed"),
    pytest.param(False, "exact", id="biases-left-out-exact"),
    pytest.param(False, "fast", id="biases-left-out-fast"),
]
# eager attention: the literal forward reproduces its arithmetic (a float32 softmax)
COMMON = dict(
    image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    num_labels=3, attn_implementation="eager",
)  # fmt: skip


def deit(seed: int, teacher: bool = True) -> nn.Module:
    config = tf.DeiTConfig(intermediate_size=24, **COMMON)
    model_class = tf.DeiTForImageClassificationWithTeacher if teacher else tf.DeiTForImageClassification
    return spec.randomize(model_class(config), seed)


def beit(seed: int, mean_pooling: bool = True) -> nn.Module:
    config = tf.BeitConfig(
        intermediate_size=24, use_relative_position_bias=True, use_mean_pooling=mean_pooling,
        layer_scale_init_value=0.1, **COMMON,
    )  # fmt: skip
    return spec.randomize(tf.BeitForImageClassification(config), seed)


def dinov2(seed: int, swiglu: bool = True) -> nn.Module:
    config = tf.Dinov2Config(mlp_ratio=2, use_swiglu_ffn=swiglu, **COMMON)
    return spec.randomize(tf.Dinov2ForImageClassification(config), seed)


def images(count: int, size: int, seed: int, dtype=spec.DTYPE) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def embedding_output(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(batch, positions, hidden): what the model's embedding block gives its first layer."""
    seen = []
    handle = model.base_model.embeddings.register_forward_hook(lambda _m, _a, output: seen.append(output))
    try:
        with torch.no_grad():
            model(pixels)
    finally:
        handle.remove()
    first = seen[0]
    return (first[0] if isinstance(first, tuple) else first).detach()


# ----------------------------------------------------------------------------------------------
# Readers of the weights into the literal spec's structures (by module name)


def self_attention_of(layer):
    """The module holding the query, key and value maps, and whether it is transformers 5.x's
    (``q_proj``, ``o_proj`` on the layer's attention) rather than 4.x's (``attention.attention``,
    Swin's ``attention.self``, with ``W_O`` at ``attention.output.dense``)."""
    attention = layer.attention
    if hasattr(attention, "q_proj"):
        return attention, True
    return (attention.self if hasattr(attention, "self") else attention.attention), False


def layer_weights(layer, heads: int, *, score_bias=None) -> spec.LayerWeights:
    """A ViT-style layer (DeiT, BEiT, Data2VecVision, Swin: ``layernorm_before``) or a DINOv2 layer
    (``norm1``, ``layer_scale1``), in the module layout of transformers 5.x (``q_proj``, ``mlp.fc1``,
    DINOv2's SwiGLU ``mlp.gate_proj``) or 4.x (``attention.attention.query``, ``intermediate.dense``,
    DINOv2's ``mlp.fc1`` or SwiGLU ``mlp.weights_in``: the gate's features, then the up-projection's)."""
    self_attention, newer = self_attention_of(layer)
    dinov2_layer = hasattr(layer, "norm1")
    if dinov2_layer:
        norm1, norm2 = layer.norm1, layer.norm2
        attention_scale, ffn_scale = layer.layer_scale1.lambda1, layer.layer_scale2.lambda1
    else:
        norm1, norm2 = layer.layernorm_before, layer.layernorm_after
        attention_scale, ffn_scale = getattr(layer, "lambda_1", None), getattr(layer, "lambda_2", None)
    ffn_gate = None
    if not hasattr(layer, "mlp"):  # BERT-style names (transformers 4.x, and Data2VecVision)
        ffn_in, ffn_out, activation = spec.affine_of(layer.intermediate.dense), spec.affine_of(layer.output.dense), spec.GELU
    elif hasattr(layer.mlp, "gate_proj"):
        mlp = layer.mlp
        ffn_in, ffn_gate, ffn_out, activation = (
            spec.affine_of(mlp.up_proj), spec.affine_of(mlp.gate_proj), spec.affine_of(mlp.down_proj), spec.SILU
        )  # fmt: skip
    elif hasattr(layer.mlp, "weights_in"):  # silu(x1) * x2 of the two halves (x1, x2) of weights_in
        mlp = layer.mlp
        ffn_gate, ffn_in = spec.affine_block_of(mlp.weights_in, 0, 2), spec.affine_block_of(mlp.weights_in, 1, 2)
        ffn_out, activation = spec.affine_of(mlp.weights_out), spec.SILU
    else:
        ffn_in, ffn_out, activation = spec.affine_of(layer.mlp.fc1), spec.affine_of(layer.mlp.fc2), spec.GELU

    def vector(value):
        return value.detach().to(spec.DTYPE) if isinstance(value, torch.Tensor) else None

    names = ("q_proj", "k_proj", "v_proj") if newer else ("query", "key", "value")
    query, key, value = (spec.affine_of(getattr(self_attention, name)) for name in names)
    return spec.LayerWeights(
        query=query,
        key=key,
        value=value,
        output=spec.affine_of(layer.attention.o_proj if newer else layer.attention.output.dense),
        heads=heads,
        kv_heads=heads,
        norm1=spec.norm_of(norm1),
        norm2=spec.norm_of(norm2),
        ffn_in=ffn_in,
        activation=activation,
        ffn_out=ffn_out,
        ffn_gate=ffn_gate,
        attention_scale=vector(attention_scale),
        ffn_scale=vector(ffn_scale),
        score_bias=score_bias,
    )


def layers_of(base) -> list:
    """The encoder's layers: ``layers`` in transformers 5.x, ``encoder.layer`` before."""
    return list(base.layers) if hasattr(base, "layers") else list(base.encoder.layer)


def softmax_of(layer, newer: str, older: str):
    """The softmax this layer's eager attention computes: ``"float32"`` (transformers' shared eager
    attention, for a float64 model too) or ``"model"`` (the model's dtype), which the families
    changed between the 4.x layout (``older``) and the 5.x one (``newer``)."""
    kind = newer if self_attention_of(layer)[1] else older
    return spec.float32_softmax if kind == "float32" else (lambda scores: torch.softmax(scores, dim=-1))


def beit_relative_position_bias(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(heads, 1 + P, 1 + P) from a relative position bias table ((2Gh-1)(2Gw-1) + 3, heads), as
    BEiT defines it: patch ``i`` at (y_i, x_i) attending to patch ``j`` reads the entry of the
    offset (y_i - y_j, x_i - x_j), rows of the table in row-major order of the offsets shifted to
    start at 0; the last three entries are CLS to a patch, a patch to CLS, and CLS to itself."""
    height, width = grid
    count = (2 * height - 1) * (2 * width - 1) + 3
    positions = [(y, x) for y in range(height) for x in range(width)]
    size = 1 + len(positions)
    index = torch.zeros(size, size, dtype=torch.long)
    for i, (yi, xi) in enumerate(positions):
        for j, (yj, xj) in enumerate(positions):
            index[1 + i, 1 + j] = (yi - yj + height - 1) * (2 * width - 1) + (xi - xj + width - 1)
    index[0, :] = count - 3
    index[:, 0] = count - 2
    index[0, 0] = count - 1
    return table.detach().to(spec.DTYPE)[index].permute(2, 0, 1)


def deit_weights(model) -> spec.ModelWeights:
    heads = model.config.num_attention_heads
    if hasattr(model, "distillation_classifier"):
        head = [spec.MeanOfHeads([spec.affine_of(model.cls_classifier), spec.affine_of(model.distillation_classifier)])]
    else:
        head = [spec.affine_of(model.classifier)]
    layers = layers_of(model.deit)
    return spec.ModelWeights(
        layers=[layer_weights(layer, heads) for layer in layers],
        pre_norm=True,
        head=head,
        final_norm=spec.norm_of(model.deit.layernorm),
        softmax=softmax_of(layers[0], newer="float32", older="float32"),
    )


def beit_weights(model, grid: tuple[int, int]) -> spec.ModelWeights:
    heads = model.config.num_attention_heads
    modules = layers_of(model.beit)

    def table(layer):  # transformers 5.x: on the layer; 4.x: on its self-attention
        bias = (
            layer.relative_position_bias
            if hasattr(layer, "relative_position_bias")
            else self_attention_of(layer)[0].relative_position_bias
        )
        return bias.relative_position_bias_table

    layers = [layer_weights(layer, heads, score_bias=beit_relative_position_bias(table(layer), grid)) for layer in modules]
    mean_pooling = model.beit.pooler.layernorm is not None
    return spec.ModelWeights(
        layers=layers,
        pre_norm=True,
        head=[spec.norm_of(model.beit.pooler.layernorm), spec.affine_of(model.classifier)]
        if mean_pooling
        else [spec.affine_of(model.classifier)],
        final_norm=None if mean_pooling else spec.norm_of(model.beit.layernorm),
        softmax=softmax_of(modules[0], newer="float32", older="model"),
    )


def dinov2_weights(model) -> spec.ModelWeights:
    heads = model.config.num_attention_heads
    layers = layers_of(model.dinov2)
    return spec.ModelWeights(
        layers=[layer_weights(layer, heads) for layer in layers],
        pre_norm=True,
        head=[spec.affine_of(model.classifier)],
        final_norm=spec.norm_of(model.dinov2.layernorm),
        softmax=softmax_of(layers[0], newer="model", older="float32"),
    )


def patch_mean_after(first: int, positions: int) -> dict[int, float]:
    return {row: 1.0 / (positions - first) for row in range(first, positions)}


def check_against_literal(model, weights, pixels, pooled_of, include_biases, method):
    out = DecompX(model, include_biases=include_biases, algorithm=method).decompose(pixels)
    embeddings = embedding_output(model, pixels)
    scale = float(out.logits.abs().max())
    for b in range(pixels.shape[0]):
        pooled = pooled_of(embeddings.shape[1])
        trace = spec.real_forward(weights, embeddings[b], pooled_row=pooled)
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        literal = spec.decompose(weights, embeddings[b], trace, pooled, mode="rule" if include_biases else "drop")
        spec.assert_matches(out.attributions[b], literal.contributions, scale, f"image {b}: attributions")
        if not include_biases:
            spec.assert_matches(out.bias[b], trace.logits - literal.contributions.sum(0), scale, f"image {b}: bias share")


# ----------------------------------------------------------------------------------------------
# Values against the literal spec


@pytest.mark.parametrize("include_biases, method", MODES)
def test_deit_with_teacher_matches_the_literal_spec(include_biases, method):
    """Positions: CLS, distillation token, 2x2 patches; the two classifiers averaged."""
    model = deit(seed=11)
    check_against_literal(
        model, deit_weights(model), images(2, 8, seed=11), lambda n: spec.Pool([{0: 1.0}, {1: 1.0}]), include_biases, method
    )


def test_deit_without_teacher_matches_the_literal_spec():
    model = deit(seed=12, teacher=False)
    check_against_literal(model, deit_weights(model), images(2, 8, seed=12), lambda n: 0, True, "exact")


@pytest.mark.parametrize("include_biases, method", MODES)
def test_beit_matches_the_literal_spec(include_biases, method):
    """Relative position bias, layer scales, the mean of the patches and the pooler's LayerNorm."""
    model = beit(seed=13)
    check_against_literal(
        model,
        beit_weights(model, (2, 2)),
        images(2, 8, seed=13),
        lambda n: spec.Pool([patch_mean_after(1, n)]),
        include_biases,
        method,
    )


def test_beit_with_cls_pooling_matches_the_literal_spec():
    model = beit(seed=14, mean_pooling=False)
    check_against_literal(model, beit_weights(model, (2, 2)), images(2, 8, seed=14), lambda n: 0, True, "exact")


@pytest.mark.parametrize("include_biases, method", MODES)
def test_dinov2_swiglu_matches_the_literal_spec_at_another_image_size(include_biases, method):
    """A 12x12 image on a model configured for 8x8: 3x3 patches with interpolated position
    embeddings; the classifier reads [CLS, mean of the patches]."""
    model = dinov2(seed=15)
    check_against_literal(
        model,
        dinov2_weights(model),
        images(2, 12, seed=15),
        lambda n: spec.Pool([{0: 1.0}, patch_mean_after(1, n)]),
        include_biases,
        method,
    )


def test_dinov2_plain_mlp_matches_the_literal_spec():
    model = dinov2(seed=16, swiglu=False)
    check_against_literal(
        model,
        dinov2_weights(model),
        images(2, 8, seed=16),
        lambda n: spec.Pool([{0: 1.0}, patch_mean_after(1, n)]),
        True,
        "exact",
    )


# ----------------------------------------------------------------------------------------------
# The battery: the Captum form, completeness, fast = exact, the model left as it was found

FLOAT32 = dict(COMMON, attn_implementation="sdpa")  # as models load by default


def float32_models() -> dict:
    """Every classifier at float32 with its default attention (sdpa), parameters redrawn."""
    return {
        "deit": tf.DeiTForImageClassification(tf.DeiTConfig(intermediate_size=24, **FLOAT32)),
        "deit-teacher": tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(intermediate_size=24, **FLOAT32)),
        "beit": tf.BeitForImageClassification(
            tf.BeitConfig(intermediate_size=24, use_relative_position_bias=True, layer_scale_init_value=0.1, **FLOAT32)
        ),
        "data2vec-vision": tf.Data2VecVisionForImageClassification(
            tf.Data2VecVisionConfig(intermediate_size=24, use_relative_position_bias=True, **COMMON)  # eager: see below
        ),
        "dinov2": tf.Dinov2ForImageClassification(tf.Dinov2Config(mlp_ratio=2, **FLOAT32)),
        "dinov2-swiglu": tf.Dinov2ForImageClassification(tf.Dinov2Config(mlp_ratio=2, use_swiglu_ffn=True, **FLOAT32)),
        "swin": tf.SwinForImageClassification(
            tf.SwinConfig(
                image_size=8,
                patch_size=2,
                embed_dim=8,
                depths=[2, 2],
                num_heads=[2, 2],
                window_size=2,
                mlp_ratio=2.0,
                num_labels=3,
            )
        ),
    }


POSITIONS = {
    "deit": 2 + 4,  # CLS, distillation token, 2x2 patches
    "deit-teacher": 2 + 4,
    "beit": 1 + 4,
    "data2vec-vision": 1 + 4,
    "dinov2": 1 + 4,
    "dinov2-swiglu": 1 + 4,
    "swin": 16,  # the first stage's 4x4 patches, no CLS token
}


def state_of(model: nn.Module) -> tuple:
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}, hooks, model.config._attn_implementation


def assert_same_state(model: nn.Module, before: tuple) -> None:
    state, hooks, attention = state_of(model)
    assert all(torch.equal(state[name], tensor) for name, tensor in before[0].items())
    assert (hooks, attention) == before[1:]


@pytest.mark.parametrize("name", sorted(POSITIONS))
def test_vision_battery(name):
    model = randomize_parameters(float32_models()[name], 21)
    pixels = images(2, 8, seed=21, dtype=torch.float32)
    before = state_of(model)

    def forward(pixel_values):
        return model(pixel_values).logits

    with torch.no_grad():
        logits = forward(pixels)
    scale = float(logits.abs().max())
    tolerance = 2e-5 * max(1.0, scale)
    # The Captum form: (batch, positions) over the first layer's input tokens, and the delta.
    attributions, delta = DecompX(forward, model=model).attribute(pixels, target=1, return_convergence_delta=True)
    assert attributions.shape == (2, POSITIONS[name])
    assert float(delta.abs().max()) <= tolerance
    # Complete against the forward function's output, for every class.
    out = DecompX(forward, model=model).decompose(pixels)
    assert float((out.attributions.sum(1) - logits).abs().max()) <= tolerance
    torch.testing.assert_close(out.attributions[:, :, 1], attributions)
    # Fast = exact without biases, to 1e-6 of the logit scale (and their bias shares).
    exact = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(pixels)
    fast = DecompX(forward, model=model, include_biases=False, algorithm="fast").decompose(pixels)
    assert float((fast.attributions - exact.attributions).abs().max()) <= 1e-6 * max(1.0, scale)
    assert float((fast.bias - exact.bias).abs().max()) <= 1e-6 * max(1.0, scale)
    # Without the head: the norms of the pooled decomposition, the same on both paths.
    pooled_exact = DecompX(forward, model=model, include_biases=False, include_head=False, algorithm="exact").attribute(pixels)
    pooled_fast = DecompX(forward, model=model, include_biases=False, include_head=False).attribute(pixels)
    torch.testing.assert_close(pooled_fast, pooled_exact, rtol=1e-5, atol=1e-5)
    assert_same_state(model, before)


def test_data2vec_vision_loaded_with_sdpa_is_refused_by_the_exact_path_only():
    """Its sdpa attention class, chosen at load time, returns no probabilities in transformers 5.x;
    in 4.x it falls back to its eager code when called with ``output_attentions=True``, so the
    exact path asks for them and decomposes it."""
    config = tf.Data2VecVisionConfig(intermediate_size=24, use_relative_position_bias=True, **FLOAT32)
    model = randomize_parameters(tf.Data2VecVisionForImageClassification(config), 22)
    pixels = images(1, 8, seed=22, dtype=torch.float32)
    assert "sdpa" in type(model.data2vec_vision.encoder.layer[0].attention.attention).__name__.lower()
    with torch.no_grad():
        returned = model(pixels, output_attentions=True)
    if returned.attentions is not None and returned.attentions[0] is not None:
        logits = returned.logits
        out = DecompX(model).decompose(pixels)
        assert float((out.attributions.sum(1) - logits).abs().max()) <= 2e-5 * max(1.0, float(logits.abs().max()))
    else:
        with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
            DecompX(model).attribute(pixels, target=0)
    assert DecompX(model, include_biases=False).attribute(pixels, target=0).shape == (1, 5)


# ----------------------------------------------------------------------------------------------
# Bad images


@pytest.mark.parametrize("name", ["deit-teacher", "beit", "dinov2", "swin"])
def test_wrong_channel_count_is_refused(name):
    model = float32_models()[name].eval()
    with pytest.raises(ValueError, match=r"3 channel\(s\) \(config.num_channels\); got 1"):
        DecompX(model).attribute(torch.zeros(1, 1, 8, 8), target=0)


def test_deit_refuses_another_size_unless_the_forward_interpolates():
    model = randomize_parameters(float32_models()["deit-teacher"], 23)
    pixels = images(1, 12, seed=23, dtype=torch.float32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        DecompX(model).attribute(pixels, target=0)

    def interpolating(pixel_values):
        return model(pixel_values, interpolate_pos_encoding=True).logits

    attributions, delta = DecompX(interpolating, model=model).attribute(pixels, target=0, return_convergence_delta=True)
    assert attributions.shape == (1, 2 + 9)  # 3x3 patches
    assert float(delta.abs().max()) < 1e-4


def test_models_that_interpolate_take_other_sizes():
    for name in ("beit", "dinov2"):
        model = randomize_parameters(float32_models()[name], 24)
        pixels = images(1, 12, seed=24, dtype=torch.float32)
        attributions, delta = DecompX(model).attribute(pixels, target=2, return_convergence_delta=True)
        assert attributions.shape == (1, 1 + 9)
        assert float(delta.abs().max()) < 1e-4


# ----------------------------------------------------------------------------------------------
# Swin: shifted windows, relative position bias, patch merging


def swin(seed: int, *, image_size: int = 8, window_size: int = 2, depths=(2, 2)) -> nn.Module:
    config = tf.SwinConfig(
        image_size=image_size, patch_size=2, num_channels=3, embed_dim=8, depths=list(depths), num_heads=[2] * len(depths),
        window_size=window_size, mlp_ratio=2.0, num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    return spec.randomize(tf.SwinForImageClassification(config), seed)


def swin_windows(table: torch.Tensor, grid: tuple[int, int], window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys each token may attend to (N, N) and the score bias (heads, N, N) of a layer that
    attends within ``window x window`` tiles of its grid cyclically shifted by ``-shift``, as the Swin
    paper describes it: tokens attend within their tile only; the relative position bias of the
    offset (dy, dx) inside the tile is the table's row ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``;
    with a shift, two tokens of one tile that come from different regions of the unshifted grid
    (three bands per axis: before ``side - w``, before ``side - shift``, the rest) get -100."""
    height, width = grid
    places = []
    for y in range(height):
        for x in range(width):
            ys, xs = (y - shift) % height, (x - shift) % width  # coordinates in the shifted grid

            def band(coordinate: int, side: int) -> int:
                return 0 if coordinate < side - window else 1 if coordinate < side - shift else 2

            places.append(((ys // window, xs // window), (ys % window, xs % window), band(ys, height) * 3 + band(xs, width)))
    count = len(places)
    allowed = torch.zeros(count, count, dtype=torch.bool)
    bias = torch.zeros(table.shape[1], count, count, dtype=spec.DTYPE)
    for i, (tile_i, (yi, xi), region_i) in enumerate(places):
        for j, (tile_j, (yj, xj), region_j) in enumerate(places):
            if tile_i != tile_j:
                continue
            allowed[i, j] = True
            row = (yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1)
            bias[:, i, j] = table[row].to(spec.DTYPE) + (-100.0 if shift and region_i != region_j else 0.0)
    return allowed, bias


def swin_weights(model, image_size: int) -> spec.ModelWeights:
    config = model.config
    grid = (image_size // config.patch_size, image_size // config.patch_size)
    layers, merges = [], {}
    for stage_index, stage in enumerate(model.swin.encoder.layers):
        for block_index, block in enumerate(stage.blocks):
            small = min(grid) <= config.window_size  # Swin's window covers a grid no larger than it, unshifted
            window = min(grid) if small else config.window_size
            shift = 0 if small or block_index % 2 == 0 else config.window_size // 2
            attention = block.attention  # the table: 5.x in relative_position_bias, 4.x in the self-attention
            holder = attention.relative_position_bias if hasattr(attention, "relative_position_bias") else attention.self
            table = holder.relative_position_bias_table.detach()
            allowed, bias = swin_windows(table, grid, window, shift)
            weights = layer_weights(block, config.num_heads[stage_index], score_bias=bias)
            weights.allowed = allowed
            layers.append(weights)
        if stage.downsample is not None:
            merges[len(layers) - 1] = spec.Merge(
                grid, spec.norm_of(stage.downsample.norm), spec.affine_of(stage.downsample.reduction)
            )
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
    return spec.ModelWeights(
        layers=layers,
        pre_norm=True,
        head=[spec.affine_of(model.classifier)],
        final_norm=spec.norm_of(model.swin.layernorm),
        softmax=softmax_of(model.swin.encoder.layers[0].blocks[0], newer="float32", older="model"),
        merges=merges,
    )


def final_tokens_mean(model, image_size: int):
    side = image_size // model.config.patch_size
    for _ in range(len(model.config.depths) - 1):
        side = (side + 1) // 2
    return lambda n: spec.Pool([{row: 1.0 / side**2 for row in range(side**2)}])


@pytest.mark.parametrize("include_biases, method", MODES)
def test_swin_matches_the_literal_spec(include_biases, method):
    """A 4x4 patch grid in 2x2 windows, shifted by one in the second layer; merged into 2x2 tokens;
    attributions over the 16 patches of the first layer."""
    model = swin(seed=31)
    pixels = images(2, 8, seed=31)
    check_against_literal(model, swin_weights(model, 8), pixels, final_tokens_mean(model, 8), include_biases, method)
    if method == "exact" and include_biases:  # each layer's token map: its rows over the first layer's patches
        maps = DecompX(model).decompose(pixels, return_token_maps=True).token_maps
        assert [tuple(m.shape) for m in maps] == [(2, 16, 16), (2, 16, 16), (2, 4, 16), (2, 4, 16)]


def test_swin_merging_an_odd_grid_matches_the_literal_spec():
    """A 6x6 grid merged to 3x3, then padded and merged to 2x2 (single-token windows: transformers'
    Swin cannot shrink a larger window below its relative position table)."""
    model = swin(seed=32, image_size=12, window_size=1, depths=(1, 1, 1))
    pixels = images(1, 12, seed=32)
    check_against_literal(model, swin_weights(model, 12), pixels, final_tokens_mean(model, 12), True, "exact")


def test_swin_grid_that_its_windows_do_not_tile_is_refused():
    """A 10x10 image: a 5x5 grid, which Swin pads to its 2x2 windows with zero states."""
    model = randomize_parameters(float32_models()["swin"], 33)
    pixels = images(1, 10, seed=33, dtype=torch.float32)
    for algorithm in ("exact", "fast"):
        with pytest.raises(NotImplementedError, match=r"pads its 5x5 token grid to windows of 2x2"):
            DecompX(model, algorithm=algorithm, include_biases=algorithm == "exact").attribute(pixels, target=0)


@pytest.mark.parametrize("model_class, config_class", [
    (tf.BeitForImageClassification, tf.BeitConfig),
    (tf.Data2VecVisionForImageClassification, tf.Data2VecVisionConfig),
])  # fmt: skip
def test_layer_scale_switched_off(model_class, config_class):
    """``layer_scale_init_value=0``: BEiT stores the number 1.0, Data2VecVision None, as its scale."""
    config = config_class(intermediate_size=24, layer_scale_init_value=0.0, **COMMON)
    model = randomize_parameters(model_class(config), 25)
    pixels = images(2, 8, seed=25, dtype=torch.float32)
    with torch.no_grad():
        logits = model(pixels).logits
    attributions, delta = DecompX(model).attribute(pixels, target=0, return_convergence_delta=True)
    assert float(delta.abs().max()) < 1e-5 * max(1.0, float(logits.abs().max()))


def data2vec_vision_weights(model, grid: tuple[int, int]) -> spec.ModelWeights:
    """Data2VecVision keeps BERT-style module names (``attention.attention.query``, ``intermediate.dense``)."""
    heads = model.config.num_attention_heads
    layers = []
    for layer in model.data2vec_vision.encoder.layer:
        attention = layer.attention.attention
        table = attention.relative_position_bias.relative_position_bias_table
        layers.append(
            spec.LayerWeights(
                query=spec.affine_of(attention.query),
                key=spec.affine_of(attention.key),
                value=spec.affine_of(attention.value),
                output=spec.affine_of(layer.attention.output.dense),
                heads=heads,
                kv_heads=heads,
                norm1=spec.norm_of(layer.layernorm_before),
                norm2=spec.norm_of(layer.layernorm_after),
                ffn_in=spec.affine_of(layer.intermediate.dense),
                activation=spec.GELU,
                ffn_out=spec.affine_of(layer.output.dense),
                attention_scale=layer.lambda_1.detach().to(spec.DTYPE),
                ffn_scale=layer.lambda_2.detach().to(spec.DTYPE),
                score_bias=beit_relative_position_bias(table, grid),
            )
        )
    return spec.ModelWeights(
        layers=layers,
        pre_norm=True,
        head=[spec.norm_of(model.data2vec_vision.pooler.layernorm), spec.affine_of(model.classifier)],
        softmax=lambda scores: torch.softmax(scores, dim=-1),  # its own eager attention: in the model dtype
    )


@pytest.mark.parametrize("include_biases, method", MODES)
def test_data2vec_vision_matches_the_literal_spec(include_biases, method):
    config = tf.Data2VecVisionConfig(
        intermediate_size=24, use_relative_position_bias=True, layer_scale_init_value=0.1, **COMMON
    )  # fmt: skip
    model = spec.randomize(tf.Data2VecVisionForImageClassification(config), 17)
    check_against_literal(
        model,
        data2vec_vision_weights(model, (2, 2)),
        images(2, 8, seed=17),
        lambda n: spec.Pool([patch_mean_after(1, n)]),
        include_biases,
        method,
    )
