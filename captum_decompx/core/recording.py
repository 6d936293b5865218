"""Recording tensors from forward hooks: what every component kind uses to say what it captures.

A :class:`Recorder` installs forward hooks that append a detached tensor to a list per
``(module, role)``; a :class:`Reader` hands the recorded calls back in call order, so that a module
that runs several times in one pass (ALBERT's shared layers) gives one value per run. The hooks are
removed by :func:`captum_decompx.core.capture.capture_internals`, the one context manager that owns them;
the smaller taps around the same pass (the model's output, the ids it embedded) hold theirs in
:func:`hooks`.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def main_input(args: tuple, kwargs: dict, name: str) -> torch.Tensor:
    """A module's main input: its first positional argument, or ``name``, or the first tensor."""
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError(f"could not find {name!r} in the arguments of a hooked module")


class Recorder:
    """The hooks of one forward pass, keyed by module identity and role, and what they recorded.

    Both algorithms install their hooks here (recording ones for the exact path, freezing ones for
    the fast path): every hook acts only on calls from the thread that created the recorder, and
    installing the same ``(module, role)`` twice installs one hook (a module shared by several
    layers, as in ALBERT, is hooked once). :meth:`remove` removes them all.
    """

    def __init__(self) -> None:
        self.by_module: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.thread = threading.get_ident()
        self._installed: set[tuple[int, str]] = set()
        self.refusals: list[Exception] = []

    def mine(self) -> bool:
        """Whether the running call comes from the thread whose pass this is."""
        return threading.get_ident() == self.thread

    def _first_time(self, module: nn.Module, role: str) -> bool:
        key = (id(module), role)
        if key in self._installed:
            return False
        self._installed.add(key)
        return True

    def forward_hook(self, module: nn.Module, role: str, hook: Callable[[nn.Module, tuple, Any], Any]) -> None:
        """Run ``hook(module, args, output)`` after every call of ``module`` (once per role); what it
        returns, when not None, replaces the output."""
        if not self._first_time(module, role):
            return

        def gated(_module, args, output):
            return hook(_module, args, output) if self.mine() else None

        self.handles.append(module.register_forward_hook(gated))

    def pre_hook(self, module: nn.Module, role: str, hook: Callable[[nn.Module, tuple, dict], Any]) -> None:
        """Run ``hook(module, args, kwargs)`` before every call of ``module`` (once per role); what it
        returns, when not None, is the ``(args, kwargs)`` the module runs with."""
        if not self._first_time(module, role):
            return

        def gated(_module, args, kwargs):
            return hook(_module, args, kwargs) if self.mine() else None

        self.handles.append(module.register_forward_pre_hook(gated, with_kwargs=True))

    def record_output(self, module: nn.Module, role: str, pick: Callable[[Any], Any] = lambda output: output) -> None:
        """Record ``pick(output)`` of every call of ``module`` under ``role``."""
        calls = self.by_module[id(module)][role]
        self.forward_hook(module, role, lambda _module, _args, output: calls.append(_detach(pick(output))))

    def record_input(self, module: nn.Module, role: str, name: str = "input") -> None:
        """Record the main input (see :func:`main_input`) of every call of ``module`` under ``role``."""
        calls = self.by_module[id(module)][role]
        self.pre_hook(module, role, lambda _module, args, kwargs: calls.append(_detach(main_input(args, kwargs, name))))

    def record_argument(self, module: nn.Module, role: str, position: int, name: str) -> None:
        """Record the argument ``name`` (at ``position``, or a keyword; None when not given) of
        every call of ``module`` under ``role``."""
        calls = self.by_module[id(module)][role]

        def hook(_module, args, kwargs):
            calls.append(_detach(args[position] if len(args) > position else kwargs.get(name)))

        self.pre_hook(module, role, hook)

    def set_argument(self, module: nn.Module, role: str, position: int, name: str, value: Any) -> None:
        """Call ``module`` with the argument ``name`` (at ``position``) set to ``value``."""

        def hook(_module, args, kwargs):
            if name in kwargs or len(args) <= position:
                return args, {**kwargs, name: value}
            return args[:position] + (value,) + args[position + 1 :], kwargs

        self.pre_hook(module, role, hook)

    def replace_output(self, module: nn.Module, role: str, transform: Callable[[Any], Any]) -> None:
        """Make ``module`` return ``transform(output)`` (e.g. a freeze rule: the same value with a
        coefficient detached from autograd) until the hooks are removed."""
        self.forward_hook(module, role, lambda _module, _args, output: transform(output))

    def check_call(self, module: nn.Module, role: str, check: Callable[[tuple, dict], Optional[Exception]]) -> None:
        """Run ``check(args, kwargs)`` after every call of ``module``, with the arguments it ran with
        (after other pre-hooks). ``check`` returns an exception for a call DecompX cannot explain; it
        is kept, not raised inside the model's forward (which may hold its own hooks then), and
        :meth:`raise_refusals` raises it after the pass."""
        if not self._first_time(module, role):
            return

        def hook(_module, args, kwargs, _output):
            if self.mine():
                refusal = check(args, kwargs)
                if refusal is not None:
                    self.refusals.append(refusal)

        self.handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def raise_refusals(self) -> None:
        """Raise the first exception a :meth:`check_call` check returned during the pass, if any."""
        if self.refusals:
            raise self.refusals[0]

    def calls(self, module: nn.Module, role: str) -> list:
        """Everything recorded for ``(module, role)``, in call order."""
        return self.by_module.get(id(module), {}).get(role, [])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._installed.clear()


class Reader:
    """Hands out a recorder's calls in order: the ``n``-th read of ``(module, role)`` is its ``n``-th call."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._read: dict[tuple[int, str], int] = defaultdict(int)

    def take(self, module: nn.Module, role: str, where: str) -> Any:
        """The next recorded call of ``(module, role)``; ``where`` names it in the error."""
        key = (id(module), role)
        calls = self.recorder.calls(module, role)
        occurrence = self._read[key]
        if occurrence >= len(calls):
            raise RuntimeError(
                f"The forward function never ran {where} (recorded {len(calls)} call(s)). Check that "
                "`model` is the module the forward function actually calls, and that the model's "
                "architecture matches its adapter."
            )
        self._read[key] += 1
        return calls[occurrence]


@contextmanager
def hooks() -> Iterator[Recorder]:
    """A :class:`Recorder` for the block: its hooks act on the entering thread's calls only and are
    removed when the block ends, whatever happens."""
    recorder = Recorder()
    try:
        yield recorder
    finally:
        recorder.remove()
