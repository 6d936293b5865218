"""``benchmarks/vision_localisation.py``: its data and measures (values on constructed cases) and a
smoke run end to end (no accuracy or timing assertions)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from support.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))

import vision_localisation as loc  # noqa: E402


def test_the_object_mask_is_the_shape_drawn_where_the_label_says():
    images = loc.make_images(12, seed=3)
    for index in range(12):
        shape = loc.shape_mask(int(images.labels[index]))
        rows, cols = images.masks[index].nonzero(as_tuple=True)
        shape_rows, shape_cols = shape.nonzero(as_tuple=True)
        top, left = int(rows.min() - shape_rows.min()), int(cols.min() - shape_cols.min())
        expected = torch.zeros(loc.IMAGE, loc.IMAGE, dtype=torch.bool)
        expected[top : top + loc.SHAPE_SIZE, left : left + loc.SHAPE_SIZE] = shape
        assert torch.equal(images.masks[index], expected)
        colour = images.pixels[index][:, images.masks[index]]
        assert torch.allclose(colour, colour[:, :1].expand_as(colour))  # one colour over the whole shape
    shapes = [loc.shape_mask(kind) for kind in range(4)]
    assert all(not torch.equal(shapes[a], shapes[b]) for a in range(4) for b in range(a))


def test_patch_fractions_pointing_game_and_positive_share():
    masks = torch.zeros(1, loc.IMAGE, loc.IMAGE, dtype=torch.bool)
    masks[0, 0:4, 0:2] = True  # half of patch 0
    masks[0, 4:8, 4:8] = True  # all of patch 9 (row 1, column 1)
    fractions = loc.patch_fractions(masks)
    assert fractions[0, 0] == 0.5 and fractions[0, loc.GRID + 1] == 1.0 and fractions[0].sum() == 1.5
    scores = torch.zeros(1, loc.GRID * loc.GRID)
    scores[0, 0], scores[0, loc.GRID + 1], scores[0, 5], scores[0, 6] = 2.0, 1.0, 1.0, -7.0
    assert loc.pointing_game(scores, fractions).tolist() == [True]
    # positive mass 4: patch 0 gives 2 * 0.5, patch 9 gives 1 * 1, patch 5 nothing; the negative one is ignored
    assert loc.positive_share_inside(scores, fractions).item() == pytest.approx(2.0 / 4.0)
    scores[0, 5] = 10.0
    assert loc.pointing_game(scores, fractions).tolist() == [False]
    assert loc.positive_share_inside(-scores.abs(), fractions).tolist() == [0.0]


def test_the_patch_sum_of_pixel_attributions():
    pixels = torch.zeros(1, 3, loc.IMAGE, loc.IMAGE)
    pixels[0, :, 4:8, 0:4] = 1.0  # patch (1, 0), three channels
    assert loc._to_patches(pixels)[0, loc.GRID].item() == 48.0 and loc._to_patches(pixels).sum().item() == 48.0


@pytest.mark.slow  # a benchmark smoke run (trains a few steps)
def test_quick_run_writes_the_report(tmp_path):
    assert loc.main(["--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "vision_localisation.md").read_text()
    raw = json.loads((tmp_path / "vision_localisation.json").read_text())
    assert "python benchmarks/vision_localisation.py --quick" in report and "load average" in report
    assert set(raw["results"]) == set(loc.METHODS) | {"random (expected)"}
    for name, values in raw["results"].items():
        assert 0.0 <= values["pointing_game"] <= 1.0 and 0.0 <= values["positive_share_inside"] <= 1.0, name
        assert f"| {name} | {values['pointing_game']:.3f} |" in report
    assert (tmp_path / "vision_localisation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
