"""Helpers for testing DecompX and its extensions on tiny random models.

Random Hugging Face models are initialized with zero biases and unit norm gains, so on them a bias
rule, a bias mode or a norm's gain "changes nothing". :func:`randomize_parameters` redraws every
parameter so that each of them matters. :func:`registrations_restored` undoes what a test
registers (adapters, bias rules, approximations, norm kinds, linear layouts, head steps,
evaluation methods).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from .components.registry import every_registry


def _norm_gains(model: nn.Module) -> set[int]:
    """The ``id``s of the gains of the model's normalization modules (LayerNorm, RMSNorm, ...)."""
    gains = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        is_norm = isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower()
        if is_norm and isinstance(weight, nn.Parameter) and weight.dim() == 1:
            gains.add(id(weight))
    return gains


def randomize_parameters(
    model: nn.Module,
    seed: int,
    *,
    weight_std: float = 0.3,
    bias_std: float = 0.2,
    embedding_std: Optional[float] = None,
    norm_gain_std: float = 0.3,
) -> nn.Module:
    """Redraw every parameter of ``model`` in place, reproducibly, so that biases and gains matter.

    Parameters are drawn in ``named_parameters()`` order from one generator seeded with ``seed``:
    normalization gains ~ ``1 + N(0, norm_gain_std^2)``, embedding tables ~ ``N(0,
    embedding_std^2)``, other matrices ~ ``N(0, weight_std^2)``, biases and other vectors ~
    ``N(0, bias_std^2)``.

    Args:
        model: any module (a Hugging Face model, a PEFT model, a custom one).
        seed: the generator's seed.
        embedding_std: default ``weight_std``.

    Returns:
        ``model`` itself, in eval mode, its dtypes unchanged.
    """
    generator = torch.Generator().manual_seed(seed)
    gains = _norm_gains(model)
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if id(parameter) in gains:
                value = 1.0 + norm_gain_std * noise
            elif id(parameter) in embeddings:
                value = (weight_std if embedding_std is None else embedding_std) * noise
            elif name.endswith("bias") or parameter.dim() < 2:
                value = bias_std * noise
            else:
                value = weight_std * noise
            parameter.copy_(value.to(parameter.dtype))
    return model.eval()


@contextmanager
def registrations_restored() -> Iterator[None]:
    """Every registry is put back as it was on entry when the block ends (also after an error)."""
    saved = [(registry, registry.snapshot()) for registry in every_registry()]
    try:
        yield
    finally:
        for registry, snapshot in saved:
            registry.restore(snapshot)


__all__ = ["randomize_parameters", "registrations_restored"]
