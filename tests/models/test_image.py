"""ViT patch attributions as image-sized heatmaps."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from captum_decompx import patch_heatmap, plot_patch_attribution


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
