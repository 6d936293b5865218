"""The logits of a two-tower image-text model (CLIP, SigLIP), as a head step.

The model computes, for this side's embedding ``a`` (batch, dim) and the other side's embeddings
``b`` (classes, dim), ``logits[n, c] = exp(logit_scale) * <a_n / |a_n|, b_c / |b_c|> + logit_bias``.
Cosine similarity is not linear in ``a``: both norms are frozen at their values in the forward
pass (as a LayerNorm's scale is), so the step is the linear map of ``a`` with the per-example
weights ``exp(logit_scale) * b_c / (|a_n| |b_c|)``, plus ``logit_bias`` as a bias of every class.
The other side is fixed: it is not decomposed on this side's call.

Recorded (exact path): this side's embedding and the other side's, packed in one tensor
(batch, 1 + classes, dim) as the step's real input. Frozen (fast path): the logits are computed
from the real embedding with the norms detached, and the other side's embeddings as constants.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from ..adapters.base import ContrastiveLogits, resolve
from .head import HeadStepKind, register_head_step
from .pieces import add_bias

_OWN, _OTHER = "contrastive: this side's embedding", "contrastive: the other side's embeddings"


def warn_frozen_norms() -> None:
    """Say that the cosine's norms are frozen (Python shows it once per process by default)."""
    warnings.warn(
        "DecompX explains the image-text logits with the two norms of the cosine similarity frozen at "
        "their values in this forward pass (as a LayerNorm's scale is frozen): the logit is then linear "
        "in this side's embedding, and the attributions plus the biases' share sum to it exactly. The "
        "other side (the texts when the image is explained, the images when the text is) is held fixed.",
        UserWarning,
        stacklevel=2,
    )


def _no_other_side(step: ContrastiveLogits) -> ValueError:
    return ValueError(
        f"The forward function never ran the other tower (no output at {step.other!r}): it returns one "
        "tower's embeddings (e.g. get_image_features), not the image-text logits. DecompX explains the "
        "logits of the full model: e.g. lambda pixels, ids, mask: model(pixel_values=pixels, input_ids=ids, "
        "attention_mask=mask).logits_per_image (or .logits_per_text with the token ids as inputs). To "
        "explain an embedding instead, take its dot product with a fixed vector, or "
        "captum_decompx.cosine_similarity_frozen_norm(embedding, other)."
    )


def contrastive_weights(own: Tensor, other: Tensor, scale: Tensor) -> Tensor:
    """(batch, classes, dim): ``scale * b_c / (|a_n| |b_c|)``, the frozen-norm map of the logits.

    Args:
        own: (batch, dim), this side's real embeddings ``a``.
        other: (batch, classes, dim) or (classes, dim), the other side's embeddings ``b``.
        scale: (), ``exp(logit_scale)``.
    """
    if other.dim() == 2:
        other = other.unsqueeze(0).expand(own.shape[0], -1, -1)
    own_norm = torch.linalg.vector_norm(own, dim=-1).view(-1, 1, 1)
    return scale * other / (torch.linalg.vector_norm(other, dim=-1, keepdim=True) * own_norm)


class ContrastiveStep(HeadStepKind):
    """The head step kind of :class:`~captum_decompx.adapters.base.ContrastiveLogits`."""

    reads_input = True
    gives_logits = True

    def install(self, recorder, model, steps, index):
        step = steps[index]
        warn_frozen_norms()
        recorder.record_output(resolve(model, step.own), _OWN)
        recorder.record_output(resolve(model, step.other), _OTHER)

    def read(self, reader, model, steps, index) -> Tensor:
        """(batch, 1 + classes, dim): this side's embedding, then the other side's embeddings."""
        step = steps[index]
        if not reader.recorder.calls(resolve(model, step.other), _OTHER):
            raise _no_other_side(step)
        own = reader.take(resolve(model, step.own), _OWN, f"this side's embedding ({step.own})")
        other = reader.take(resolve(model, step.other), _OTHER, f"the other side's embeddings ({step.other})")
        return torch.cat([own.unsqueeze(1), other.unsqueeze(0).expand(own.shape[0], -1, -1).to(own.dtype)], dim=1)

    def freeze(self, freezer, model, steps, index):
        """The logits from the real embedding with the norms detached (``state.head_output``)."""
        step = steps[index]
        warn_frozen_norms()
        state, seen = freezer.state, {}
        scale, bias = self.resolve(model, step, torch.float32)

        def finish() -> None:
            if _OWN in seen and _OTHER in seen and state.head_output is None:
                own, other = seen[_OWN], seen[_OTHER].detach()
                weights = contrastive_weights(own.detach(), other.to(own.dtype), scale.to(own.dtype))
                logits = torch.einsum("nd,ncd->nc", own, weights)
                state.head_output = logits if bias is None else logits + bias.to(own.dtype)

        def record(role: str):
            def hook(_module, _args, output):
                seen.setdefault(role, output)
                finish()

            return hook

        freezer.recorder.forward_hook(resolve(model, step.own), _OWN, record(_OWN))
        freezer.recorder.forward_hook(resolve(model, step.other), _OTHER, record(_OTHER))

    def resolve(self, model, step, dtype) -> tuple[Tensor, Optional[Tensor]]:
        """``exp(logit_scale)`` () and ``logit_bias`` () or None."""
        scale = resolve(model, step.scale).detach().to(dtype).exp().reshape(())
        bias = None if step.bias is None else resolve(model, step.bias).detach().to(dtype).reshape(())
        return scale, bias

    def propagate(self, pieces, params, real_input, settings):
        """pieces (batch, 1, pieces, dim), real_input (batch, 1, 1 + classes, dim) -> (batch, 1, pieces, classes)."""
        scale, bias = params
        own, other = real_input[:, 0, 0], real_input[:, 0, 1:]
        logits = torch.einsum("brpd,bcd->brpc", pieces, contrastive_weights(own, other, scale).to(pieces.dtype))
        return add_bias(logits, None if bias is None else bias.expand(other.shape[1]).to(pieces.dtype), settings)


register_head_step(ContrastiveLogits, ContrastiveStep())

__all__ = ["ContrastiveStep", "contrastive_weights", "warn_frozen_norms"]
