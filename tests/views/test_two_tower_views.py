"""The image-text views: the per-prompt view and the interaction plot."""

from __future__ import annotations

import pytest
import torch

from captum_decompx.visualization import plot_image_text_interaction, plot_image_text_view

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_view_draws_one_row_per_prompt(tmp_path):
    path = tmp_path / "view.png"
    image_scores = torch.randn(2, 5)
    text_scores = torch.randn(2, 4)
    figure = plot_image_text_view(
        torch.rand(3, 4, 4),
        image_scores,
        ["a cat", "a dog"],
        [["<s>", "a", "cat", "</s>"], ["<s>", "a", "dog"]],
        text_scores,
        2,
        logits=torch.tensor([1.0, -1.0]),
        path=path,
    )
    assert path.read_bytes()[:8] == PNG
    assert len(figure.axes) >= 4
    with pytest.raises(ValueError, match="one row of image scores"):
        plot_image_text_view(torch.rand(3, 4, 4), image_scores, ["a cat"], [["a"]], text_scores, 2)


def test_the_interaction_plot_has_a_column_per_token(tmp_path):
    path = tmp_path / "interaction.png"
    plot_image_text_interaction(torch.randn(5, 3), torch.rand(3, 4, 4), ["a", "b", "c"], 2, path=path)
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="3 token columns"):
        plot_image_text_interaction(torch.randn(5, 3), torch.rand(3, 4, 4), ["a"], 2)
