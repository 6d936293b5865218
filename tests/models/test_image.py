"""ViT patch attributions as image-sized heatmaps."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from captum_decompx import DecompX, captum_image_inputs, patch_heatmap, pixel_attributions, plot_patch_attribution


def test_each_pixel_holds_its_patch_value_and_cls_is_dropped():
    values = torch.arange(1 + 6, dtype=torch.float32)  # CLS, then a 2x3 grid of patches
    heat = patch_heatmap(values, (4, 6), patch_size=2)
    assert heat.shape == (4, 6)
    for row in range(4):
        for col in range(6):
            assert heat[row, col] == values[1 + (row // 2) * 3 + col // 2]


def test_without_cls_and_wrong_counts():
    assert torch.equal(patch_heatmap(torch.ones(4), (4, 4), 2), torch.ones(4, 4))
    with pytest.raises(ValueError, match="patch attributions"):
        patch_heatmap(torch.ones(3), (4, 4), 2)


def test_plot_writes_png(tmp_path):
    path = tmp_path / "vit.png"
    plot_patch_attribution(torch.rand(3, 8, 8), torch.randn(1 + 16), patch_size=2, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# Pixel maps for Captum's image visualizations


def test_leading_tokens_and_rectangular_patches():
    values = torch.arange(2 + 6, dtype=torch.float32)  # CLS, distillation token, then 2x3 patches
    heat = patch_heatmap(values, (4, 9), (2, 3), leading_tokens=2)
    assert heat[0, 0] == 2 and heat[1, 2] == 2 and heat[0, 3] == 3 and heat[3, 8] == 7
    with pytest.raises(ValueError, match="leading_tokens="):
        patch_heatmap(values, (4, 9), (2, 3))  # two leading tokens are not guessed


def test_pixels_no_patch_reads_get_zero_and_a_padding_model_rounds_up():
    values = torch.arange(1.0, 5.0)  # 2x2 patches of 4 pixels in a 10x10 image: rows and columns 8-9 unread
    heat = patch_heatmap(values, (10, 10), 4, leading_tokens=0)
    assert torch.all(heat[8:] == 0) and torch.all(heat[:, 8:] == 0) and heat[7, 7] == 4
    padded = patch_heatmap(torch.arange(1.0, 10.0), (10, 10), 4, leading_tokens=0, pads=True)  # 3x3: Swin pads
    assert padded[9, 9] == 9 and padded[0, 9] == 3


def test_pixel_attributions_read_the_model_layout():
    import transformers as tf

    common = dict(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_labels=3)
    deit = tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(intermediate_size=24, **common)).eval()
    dinov2 = tf.Dinov2ForImageClassification(tf.Dinov2Config(mlp_ratio=2, **common)).eval()
    swin = tf.SwinForImageClassification(
        tf.SwinConfig(image_size=16, patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=2, num_labels=3)
    ).eval()
    # DeiT: 2 leading tokens; DINOv2 at 12x12: a 3x3 grid with interpolated positions; Swin: the
    # first stage's 4x4 patches, no CLS token.
    expected_leading = {deit: 2, dinov2: 1, swin: 0}
    for model, pixels in (
        (deit, torch.randn(2, 3, 8, 8)),
        (dinov2, torch.randn(2, 3, 12, 12)),
        (swin, torch.randn(2, 3, 16, 16)),
    ):
        attributions = DecompX(model).attribute(pixels, target=0)
        maps = pixel_attributions(attributions, pixels, model)
        assert maps.shape == (2, 1, *pixels.shape[2:])
        leading = attributions.shape[1] - (pixels.shape[2] // 4) ** 2
        assert leading == expected_leading[model]
        assert maps[1, 0, -1, -1] == attributions[1, -1] and maps[0, 0, 0, 0] == attributions[0, leading]
        assert pixel_attributions(attributions[0], pixels[0], model).shape == (1, *pixels.shape[2:])


def test_captum_draws_the_pixel_maps():
    from captum.attr import visualization as captum_visualization

    pixels = torch.rand(1, 3, 8, 8)
    [(attr, image)] = captum_image_inputs(torch.randn(1, 1 + 4), pixels, patch_size=4)
    assert attr.shape == (8, 8, 1) and image.shape == (8, 8, 3) and 0 <= image.min() and image.max() <= 1
    figure, _ = captum_visualization.visualize_image_attr(attr, image, method="blended_heat_map", sign="all", use_pyplot=False)
    assert figure is not None
    figure, _ = captum_visualization.visualize_image_attr_multiple(
        attr, image, ["original_image", "heat_map"], ["all", "positive"], use_pyplot=False
    )
    assert figure is not None
