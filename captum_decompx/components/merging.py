"""Patch merging between stages (Swin): each 2x2 block of the token grid becomes one token.

The model concatenates the states of the block's four tokens (row and column offsets (0, 0),
(1, 0), (0, 1), (1, 1), in that order), normalizes the concatenation (LayerNorm over four times
the hidden size) and maps it linearly. The decomposition does the same piece by piece: a merged
token's piece ``k`` is the concatenation of the four tokens' pieces ``k``, normalized with the real
statistics of the concatenated state and mapped linearly (its bias, if any, by the bias rule), so
the pieces stay over the first layer's tokens through every merge. A grid with an odd side is
padded with zero states by the model; their pieces are zero here.

Recorded (exact path): the merging norm's input and the merged grid. Frozen (fast path): the norm's
statistic; the concatenation and the linear map are differentiated as they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import Stages, resolve
from ..core.recording import Reader, Recorder
from .base import Component
from .linear import Affine, LinearMap, linear
from .norms import Normalization, NormParams, normalize
from .pieces import Settings

if TYPE_CHECKING:
    from ..core.freezing import Freezer


@dataclass
class MergeRecord:
    """What one patch merging did: ``norm_input`` (batch, merged seq, 4 * hidden), the real
    input of its norm; ``grid`` (height, width), the token grid it merged."""

    norm_input: Tensor
    grid: tuple[int, int]

    def select(self, batch: slice, dtype: torch.dtype) -> "MergeRecord":
        return MergeRecord(self.norm_input[batch].to(dtype), self.grid)


@dataclass(frozen=True)
class MergeParams:
    """The merging's norm (None: none) and linear map, in the compute dtype."""

    norm: Optional[NormParams]
    reduction: Affine


def merge_patches(pieces: Tensor, record: MergeRecord, params: MergeParams, settings: Settings) -> Tensor:
    """Merge each 2x2 block of the grid into one token, piece by piece.

    Args:
        pieces: (batch, height * width, pieces, hidden), rows in row-major order of the grid.

    Returns:
        (batch, ceil(height / 2) * ceil(width / 2), pieces, out).
    """
    batch, seq, n_pieces, hidden = pieces.shape
    height, width = record.grid
    if seq != height * width:
        raise RuntimeError(f"A patch merging of a {height}x{width} grid got {seq} rows to merge.")
    grid = pieces.reshape(batch, height, width, n_pieces, hidden)
    if height % 2 or width % 2:  # the model pads with zero states; their pieces are zero
        grid = nn.functional.pad(grid, (0, 0, 0, 0, 0, width % 2, 0, height % 2))
    blocks = [grid[:, row::2, col::2] for col in range(2) for row in range(2)]
    merged = torch.cat(blocks, dim=-1).reshape(batch, -1, n_pieces, 4 * hidden)
    merged = normalize(merged, record.norm_input, params.norm, settings)
    return linear(merged, params.reduction, settings)


@dataclass(frozen=True)
class PatchMerging(Component):
    """The patch merging of one stage (paths relative to the stage, from :class:`Stages`)."""

    stages: Stages

    @property
    def norm(self) -> Normalization:
        return Normalization(f"{self.stages.merging}.{self.stages.norm}")

    def module(self, stage: nn.Module) -> nn.Module:
        return resolve(stage, self.stages.merging)

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        self.norm.install(recorder, root)
        position, name = self.stages.grid_argument
        recorder.record_argument(self.module(root), "merged grid", position, name)

    def read(self, reader: Reader, root: nn.Module, where: str) -> MergeRecord:
        norm_input = self.norm.read(reader, root, f"the norm of {where}")
        height, width = reader.take(self.module(root), "merged grid", where)
        return MergeRecord(norm_input, (int(height), int(width)))

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        self.norm.freeze(freezer, root, first=False)

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> MergeParams:
        reduction = LinearMap.at(f"{self.stages.merging}.{self.stages.reduction}").resolve(root, dtype)
        return MergeParams(self.norm.resolve(root, dtype), reduction)

    propagate = staticmethod(merge_patches)


def merging_stages(model: nn.Module, stages: Stages) -> dict[int, nn.Module]:
    """Per layer index (in the flat execution order), the stage whose patch merging follows it."""
    after, done = {}, 0
    for stage in resolve(model, stages.path):
        done += len(resolve(stage, stages.blocks))
        if getattr(stage, stages.merging.split(".")[0], None) is not None:
            after[done - 1] = stage
    return after
