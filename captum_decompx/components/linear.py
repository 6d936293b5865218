"""Linear maps: ``nn.Linear``, GPT-2's ``Conv1D`` (weights stored (in, out)), and one block
``[i/n]`` of a fused projection's output features (e.g. ``"attn.Wqkv[2/3]"``, the values) or a
feature range ``[start:stop]`` of it.

A new storage layout is one :class:`LinearLayout` passed to :func:`register_linear_layout`; PEFT's
LoRA layers are one (:mod:`.lora`: their effective map, read without merging).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor, nn

from ..adapters.base import Block, resolve, split_block, take_block
from ..core.recording import Reader, Recorder
from .base import Component
from .pieces import Settings, add_bias
from .registry import Registry

if TYPE_CHECKING:
    from ..core.freezing import Freezer


@dataclass(frozen=True)
class Affine:
    """A linear map's parameters: ``x @ weight.T + bias``; ``weight`` is (out, in), ``bias`` (out,) or None."""

    weight: Tensor
    bias: Optional[Tensor]


@dataclass(frozen=True)
class LinearLayout:
    """How one module class stores a linear map.

    Attributes:
        name: a readable name.
        matches: whether a module is stored this way.
        out_in_weight: the module's weight as (out, in); may raise :class:`UnsupportedLinearMap`.
        bias: the module's bias (out,) or None; by default its ``bias`` attribute.
        check_call: optional ``(module, args, kwargs) -> exception or None``, run after each call of
            the module in the captured pass; the exception (raised after the pass) refuses a call
            whose map is not the one resolved.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    out_in_weight: Callable[[nn.Module], Tensor]
    bias: Callable[[nn.Module], Optional[Tensor]] = lambda module: _bias(module)
    check_call: Optional[Callable[[nn.Module, tuple, dict], Optional[Exception]]] = None


class UnsupportedLinearMap(TypeError):
    """Raised by a layout for a module of its kind whose map DecompX does not decompose (the
    message says why and what is supported; the path is added where it is raised)."""


def _weight(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def _bias(module: nn.Module) -> Optional[Tensor]:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, Tensor) else None


_LAYOUTS: Registry[LinearLayout] = Registry("linear layout")


def register_linear_layout(layout: LinearLayout, *, overwrite: bool = False) -> None:
    """Teach the linear kind another module class (tried before the layouts registered earlier).

    Args:
        layout: registered under ``layout.name``.
        overwrite: replace a layout registered before under the same name (it keeps its place).
    """
    if not isinstance(layout, LinearLayout):
        raise TypeError(f"layout must be a LinearLayout, got {layout!r}.")
    _LAYOUTS.register(layout.name, layout, overwrite=overwrite)


def unregister_linear_layout(name: str) -> None:
    """Remove a layout registered with :func:`register_linear_layout`."""
    _LAYOUTS.unregister(name)


def layout_of(module: nn.Module) -> Optional[LinearLayout]:
    """The most recently registered layout that matches ``module``, or None."""
    return next((layout for _, layout in reversed(_LAYOUTS.items()) if layout.matches(module)), None)


register_linear_layout(LinearLayout("nn.Linear", lambda module: isinstance(module, nn.Linear), _weight))
register_linear_layout(LinearLayout("Conv1D", lambda module: type(module).__name__ == "Conv1D", lambda module: _weight(module).T))


def module_affine(module: nn.Module) -> Affine:
    """The map of a module of a registered layout, detached, in the module's own dtype.

    Raises:
        UnsupportedLinearMap: no layout matches, or the layout refuses the module.
    """
    layout = layout_of(module)
    if layout is None:
        raise UnsupportedLinearMap(f"found {type(module).__name__}, which is not a linear map DecompX knows")
    bias = layout.bias(module)
    return Affine(layout.out_in_weight(module).detach(), None if bias is None else bias.detach())


def install_call_checks(recorder: Recorder, model: nn.Module) -> None:
    """Give every module of ``model`` whose layout has a ``check_call`` that check, for the captured
    pass (all of them: a map changed per call matters wherever it is, also where only its effect
    on the attention probabilities is read)."""
    for module in model.modules():
        layout = layout_of(module)
        check = None if layout is None else layout.check_call
        if check is not None:
            recorder.check_call(module, "call_check", functools.partial(check, module))


def linear(pieces: Tensor, affine: Affine, settings: Settings) -> Tensor:
    """``W`` on every piece, then the bias by the settings. pieces: (..., in) -> (..., out)."""
    return add_bias(pieces @ affine.weight.T, affine.bias, settings, in_place=True)


@dataclass(frozen=True)
class LinearMap(Component):
    """A linear map at a path (parsed once), optionally one block ``[i/n]`` of its output features.

    Attributes:
        module_path: the module's dotted path.
        block: ``(index, count)`` of the block, a feature range, or None for the whole map.
    """

    module_path: str
    block: Optional[Block] = None

    @classmethod
    def at(cls, path: str) -> "LinearMap":
        """``"attn.Wqkv[2/3]"`` -> the third of three blocks of ``attn.Wqkv``."""
        module_path, block = split_block(path)
        return cls(module_path, block)

    def module(self, root: nn.Module) -> nn.Module:
        return resolve(root, self.module_path)

    # recorded: the map's output (a pre-activation), when a later component asks for it
    def install(self, recorder: Recorder, root: nn.Module) -> None:
        recorder.record_output(self.module(root), "output")

    def read(self, reader: Reader, root: nn.Module, where: str) -> Tensor:
        """(batch, ..., out), this block of the map's real output."""
        return take_block(reader.take(self.module(root), "output", where), self.block)

    def resolve(self, root: nn.Module, dtype: torch.dtype) -> Affine:
        module = self.module(root)
        layout = layout_of(module)
        if layout is None:
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                raise TypeError(f"{self.module_path} ({type(module).__name__}) is not a linear map; check the adapter's paths.")
            raise TypeError(
                f"Expected a linear map at {self.module_path}, found {type(module).__name__}; teach DecompX its "
                "storage with register_linear_layout."
            )
        try:
            whole = module_affine(module)
        except UnsupportedLinearMap as error:
            raise UnsupportedLinearMap(f"The linear map at {self.module_path}: {error}") from None
        weight = take_block(whole.weight, self.block, dim=0).to(dtype)
        bias = None if whole.bias is None else take_block(whole.bias, self.block, dim=0).to(dtype)
        return Affine(weight, bias)

    def freeze(self, freezer: "Freezer", root: nn.Module, *, first: bool) -> None:
        """A linear map has nothing to freeze: the fast path differentiates the real call."""
        return None

    def output_bias(self, root: nn.Module) -> Optional[Tensor]:
        """(out,) the bias of this block of the map, placed in the whole module's output (zero in
        its other blocks), detached, in the module's dtype: what this block adds to the module's
        output. None without a bias."""
        module = self.module(root)
        parameter = next(module.parameters(), None)
        dtype = parameter.dtype if parameter is not None and parameter.dtype.is_floating_point else torch.float32
        # The layout's own reading of the map (plain, Conv1D, fused, LoRA: its effective bias).
        bias = LinearMap(self.module_path).resolve(root, dtype).bias
        if bias is None or self.block is None:
            return bias
        own = torch.zeros_like(bias)
        take_block(own, self.block, dim=0).copy_(take_block(bias, self.block, dim=0))
        return own

    propagate = staticmethod(linear)


def affine(root: nn.Module, path: str, dtype: torch.dtype) -> Affine:
    """The parameters of the linear map at ``path`` (which may end in ``[i/n]``)."""
    return LinearMap.at(path).resolve(root, dtype)
