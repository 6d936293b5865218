"""Bias rules: how a bias is spread over the pieces of a decomposition (the paper's Eq. 9-10).

A rule gives each piece a non-negative score; the piece receives ``score / sum(scores)`` of the
bias. Rules are objects registered by name; add your own with :func:`register_bias_rule` and pass
its name as ``DecompX(..., bias_decomposition=name)``::

    class Largest(BiasRule):
        def scores(self, pieces, bias):
            norms = pieces.norm(dim=-1)
            return (norms == norms.max(-1, keepdim=True).values).to(pieces.dtype)

    register_bias_rule("largest", Largest())
"""

from __future__ import annotations

import abc
from typing import Callable, Union

import torch
from torch import Tensor

from .registry import Names, Registry

RULE_EPS = 1e-12


class BiasRule(abc.ABC):
    """How much of a bias each piece receives."""

    @abc.abstractmethod
    def scores(self, pieces: Tensor, bias: Tensor) -> Tensor:
        """Non-negative scores of the pieces.

        Args:
            pieces: (..., pieces, dim).
            bias: (dim,), or (..., 1, dim) for a bias that differs per row.

        Returns:
            (..., pieces).
        """

    def weights(self, pieces: Tensor, bias: Tensor) -> Tensor:
        """The share of the bias each piece receives: (..., pieces), summing to one over the pieces
        axis (up to the ``1e-12`` guard that keeps an all-zero row at zero)."""
        scores = self.scores(pieces, bias)
        return scores / (scores.sum(-1, keepdim=True) + RULE_EPS)


class AbsDot(BiasRule):
    """``|<piece, bias>|`` (the paper's default)."""

    def scores(self, pieces: Tensor, bias: Tensor) -> Tensor:
        if bias.dim() == 1:
            return (pieces @ bias).abs()
        return (pieces @ bias.transpose(-1, -2)).squeeze(-1).abs()


class AbsSim(BiasRule):
    """``|cos(piece, bias)|``; zero for a zero piece."""

    def scores(self, pieces: Tensor, bias: Tensor) -> Tensor:
        nonzero = torch.linalg.vector_norm(pieces, dim=-1) != 0
        return torch.nn.functional.cosine_similarity(pieces, bias, dim=-1).abs() * nonzero


class PieceNorm(BiasRule):
    """``||piece||``."""

    def scores(self, pieces: Tensor, bias: Tensor) -> Tensor:
        return torch.linalg.vector_norm(pieces, dim=-1)


class Equal(BiasRule):
    """Equal shares among the non-zero pieces."""

    def scores(self, pieces: Tensor, bias: Tensor) -> Tensor:
        return (torch.linalg.vector_norm(pieces, dim=-1) != 0).to(pieces.dtype)


class FirstPiece(BiasRule):
    """All of the bias to the first piece (the CLS token)."""

    def scores(self, pieces: Tensor, bias: Tensor) -> Tensor:
        scores = torch.zeros(pieces.shape[:-1], dtype=pieces.dtype, device=pieces.device)
        scores[..., 0] = 1.0
        return scores


class _ScoreFunction(BiasRule):
    def __init__(self, function: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.function = function

    def scores(self, pieces: Tensor, bias: Tensor) -> Tensor:
        return self.function(pieces, bias)


_RULES: Registry[BiasRule] = Registry("bias rule")

BIAS_RULES = Names(_RULES)
"""The registered rule names (a live view: rules registered later are in it)."""


def register_bias_rule(name: str, rule: Union[BiasRule, Callable[[Tensor, Tensor], Tensor]], *, overwrite: bool = False) -> None:
    """Make ``name`` a valid ``bias_decomposition``.

    Args:
        name: the name users pass as ``DecompX(..., bias_decomposition=name)``.
        rule: a :class:`BiasRule`, or a function ``scores(pieces, bias)`` with the shapes of
            :meth:`BiasRule.scores` returning non-negative scores.
        overwrite: replace a rule registered before under the same name.
    """
    if not isinstance(rule, BiasRule):
        if not callable(rule):
            raise TypeError(f"rule must be a BiasRule or a function scores(pieces, bias), got {rule!r}.")
        rule = _ScoreFunction(rule)
    _RULES.register(name, rule, overwrite=overwrite)


def unregister_bias_rule(name: str) -> None:
    """Remove a rule registered with :func:`register_bias_rule`."""
    _RULES.unregister(name)


def bias_rule(name: str) -> BiasRule:
    """The rule registered as ``name``; a ValueError naming the registered rules when there is none."""
    return _RULES.get(name)


def bias_rule_weights(pieces: Tensor, bias: Tensor, rule: Union[str, BiasRule]) -> Tensor:
    """Share of a bias that goes to each piece.

    Args:
        pieces: (..., pieces, dim).
        bias: (dim,), or (..., 1, dim) for a bias that differs per row.
        rule: a registered rule name (:data:`BIAS_RULES`) or a :class:`BiasRule`.

    Returns:
        (..., pieces), summing to one over the pieces axis (up to the ``1e-12`` guard).
    """
    return (rule if isinstance(rule, BiasRule) else bias_rule(rule)).weights(pieces, bias)


register_bias_rule("absdot", AbsDot())
register_bias_rule("abssim", AbsSim())
register_bias_rule("norm", PieceNorm())
register_bias_rule("equal", Equal())
register_bias_rule("cls", FirstPiece())
