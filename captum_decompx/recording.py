"""Recording tensors from forward hooks: what every component kind uses to say what it captures.

A :class:`Recorder` installs forward hooks that append a detached tensor to a list per
``(module, role)``; a :class:`Reader` hands the recorded calls back in call order, so that a module
that runs several times in one pass (ALBERT's shared layers) gives one value per run. The hooks are
removed by :func:`captum_decompx.capture.capture_internals`, the one context manager that owns them.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Callable, Optional

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
    """Forward hooks that collect tensors, keyed by module identity and role, in call order.

    Only calls from the thread that created the recorder are recorded. Installing the same
    ``(module, role)`` twice installs one hook.
    """

    def __init__(self) -> None:
        self.by_module: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.thread = threading.get_ident()
        self._installed: set[tuple[int, str]] = set()
        self.refusals: list[Exception] = []

    def _first_time(self, module: nn.Module, role: str) -> bool:
        key = (id(module), role)
        if key in self._installed:
            return False
        self._installed.add(key)
        return True

    def record_output(self, module: nn.Module, role: str, pick: Callable[[Any], Any] = lambda output: output) -> None:
        """Record ``pick(output)`` of every call of ``module`` under ``role``."""
        if not self._first_time(module, role):
            return

        def hook(_module, _args, output):
            if threading.get_ident() == self.thread:
                self.by_module[id(module)][role].append(_detach(pick(output)))

        self.handles.append(module.register_forward_hook(hook))

    def record_input(self, module: nn.Module, role: str, name: str = "input") -> None:
        """Record the main input (see :func:`main_input`) of every call of ``module`` under ``role``."""
        if not self._first_time(module, role):
            return

        def hook(_module, args, kwargs):
            if threading.get_ident() == self.thread:
                self.by_module[id(module)][role].append(_detach(main_input(args, kwargs, name)))

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def record_argument(self, module: nn.Module, role: str, position: int, name: str) -> None:
        """Record the argument ``name`` (at ``position``, or a keyword; None when not given) of
        every call of ``module`` under ``role``."""
        if not self._first_time(module, role):
            return

        def hook(_module, args, kwargs):
            if threading.get_ident() == self.thread:
                value = args[position] if len(args) > position else kwargs.get(name)
                self.by_module[id(module)][role].append(_detach(value))

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def set_argument(self, module: nn.Module, role: str, position: int, name: str, value: Any) -> None:
        """Call ``module`` with the argument ``name`` (at ``position``) set to ``value``."""
        if not self._first_time(module, role):
            return
        thread = self.thread

        def hook(_module, args, kwargs):
            if threading.get_ident() != thread:
                return None
            if name in kwargs or len(args) <= position:
                kwargs = {**kwargs, name: value}
            else:
                args = args[:position] + (value,) + args[position + 1 :]
            return args, kwargs

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def replace_output(self, module: nn.Module, role: str, transform: Callable[[Any], Any]) -> None:
        """Make ``module`` return ``transform(output)`` (e.g. a freeze rule: the same value with a
        coefficient detached from autograd) until the hooks are removed."""
        if not self._first_time(module, role):
            return
        thread = self.thread

        def hook(_module, _args, output):
            if threading.get_ident() != thread:
                return None
            return transform(output)

        self.handles.append(module.register_forward_hook(hook))

    def check_call(self, module: nn.Module, role: str, check: Callable[[tuple, dict], Optional[Exception]]) -> None:
        """Run ``check(args, kwargs)`` after every call of ``module``, with the arguments it ran with
        (after other pre-hooks). ``check`` returns an exception for a call DecompX cannot explain; it
        is kept, not raised inside the model's forward (which may hold its own hooks then), and
        :meth:`raise_refusals` raises it after the pass."""
        if not self._first_time(module, role):
            return
        thread = self.thread

        def hook(_module, args, kwargs, _output):
            if threading.get_ident() == thread:
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
