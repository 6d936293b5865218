"""Attention in shifted windows (Swin), read as the full attention it is.

A Swin layer cuts its (height, width) token grid, cyclically shifted by ``-shift`` along both axes,
into ``window x window`` tiles and runs attention inside each tile; the model's attention module
returns the probabilities of every tile (batch * windows, heads, window^2, window^2). Each of them
is a block of the layer's (seq x seq) attention: token ``i`` attends to token ``j`` with the tile's
probability when both sit in one tile, and with probability zero otherwise. Read that way, the
layer is an ordinary pre-LN layer (:mod:`.layer`) and the decomposition passes through it with no
rule of its own.

Recorded (exact path): the tiles' probabilities and the layer's grid argument; the window side
and the shift are the layer's attributes after its call (Swin shrinks its window to a grid smaller
than it). Frozen (fast path): the probabilities as for any attention; in the first layer, the
value bias that belongs to each token is laid out in tiles like the values it is added to.

A grid that the windows do not tile (Swin pads it with zero states, which carry only biases into
the attention) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..adapters.base import Windows
from ..core.recording import Reader, Recorder, main_input
from .attention import Attention

if TYPE_CHECKING:
    from ..core.freezing import Freezer


def window_token_index(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(windows, window * window): the sequence index (row-major in the grid) of every place of
    every tile, tiles in the order the model lays them out (row-major over the shifted grid, each
    tile read row-major)."""
    grid = torch.arange(height * width, device=device).view(height, width)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(0, 1))
    tiles = grid.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    return tiles.reshape(-1, window * window)


def full_attention(windowed: Tensor, index: Tensor) -> Tensor:
    """The tiles' probabilities as the layer's attention.

    Args:
        windowed: (batch * windows, heads, places, places), tiles of one example consecutive.
        index: (windows, places), from :func:`window_token_index`.

    Returns:
        (batch, heads, seq, seq), zero between tokens of different tiles.
    """
    windows, places = index.shape
    batch, heads, seq = windowed.shape[0] // windows, windowed.shape[1], windows * places
    per_tile = windowed.reshape(batch, windows, heads, places, places).transpose(1, 2)
    flat_index = (index[:, :, None] * seq + index[:, None, :]).reshape(1, 1, -1).expand(batch, heads, -1)
    full = windowed.new_zeros(batch, heads, seq * seq)
    full.scatter_(2, flat_index, per_tile.reshape(batch, heads, -1))
    return full.view(batch, heads, seq, seq)


def to_windows(states: Tensor, index: Tensor) -> Tensor:
    """(batch, seq, dim) -> (batch * windows, places, dim), laid out as the model's tiles."""
    batch, dim = states.shape[0], states.shape[-1]
    return states[:, index.flatten()].reshape(batch * index.shape[0], index.shape[1], dim)


@dataclass(frozen=True)
class ShiftedWindowAttention(Attention):
    """Attention at ``path`` computed in (shifted) windows of the layer's token grid."""

    windows: Windows = field(default_factory=Windows)

    def install(self, recorder: Recorder, root: nn.Module) -> None:
        super().install(recorder, root)
        position, name = self.windows.grid_argument
        recorder.record_argument(root, "window grid", position, name)

    def read(self, reader: Reader, root: nn.Module, where: str) -> Tensor:
        """(batch, heads, seq, seq): the tiles' probabilities, zero between tiles."""
        windowed = super().read(reader, root, where)
        height, width = reader.take(root, "window grid", f"{where} (its grid)")
        return full_attention(windowed, self.token_index(root, int(height), int(width), windowed.device, where))

    def token_index(self, layer: nn.Module, height: int, width: int, device: torch.device, where: str) -> Tensor:
        """:func:`window_token_index` with the layer's window and shift; a grid the windows do
        not tile is refused."""
        window, shift = int(getattr(layer, self.windows.window_size)), int(getattr(layer, self.windows.shift_size))
        if height % window or width % window:
            raise NotImplementedError(
                f"{where[0].upper()}{where[1:]} pads its {height}x{width} token grid to windows of {window}x{window}: "
                "the padded positions are zero states that carry only biases into the attention, which DecompX "
                "does not decompose. Use an image size whose patch grid, at every stage, is a multiple of the "
                f"window size (config.window_size), e.g. the model's config.image_size."
            )
        return window_token_index(height, width, window, shift, device)

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        if first:  # every token of an image is real: no padding to read from the tiles

            def every_token_is_real(_module, args, kwargs):
                if freezer.state.real_tokens is None:
                    hidden = main_input(args, kwargs, "hidden_states")
                    freezer.state.real_tokens = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

            freezer.recorder.pre_hook(root, "every token is real", every_token_is_real)
        super().freeze(freezer, root, first=first)

    def freeze_own_value_bias(self, freezer: "Freezer", root: nn.Module, bias: Tensor) -> None:
        """The tokens' shares of the first layer's value bias, laid out in the tiles of the value map's output."""
        position, name = self.windows.grid_argument
        freezer.recorder.record_argument(root, "window grid", position, name)
        calls = [0]

        def add_own_shares(_module, _args, output):
            calls[0] += 1
            own = freezer.own_bias_term(bias, output.dtype) if calls[0] == 1 else None
            if own is None:
                return None
            height, width = freezer.recorder.calls(root, "window grid")[-1]
            index = self.token_index(root, int(height), int(width), output.device, "the first layer's attention")
            return output + to_windows(own, index)

        freezer.recorder.forward_hook(self.value.module(root), "own bias", add_own_shares)
