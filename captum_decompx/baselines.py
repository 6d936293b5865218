"""GlobEnc and ALTI, the token-attribution baselines the DecompX paper compares against.

Both methods build, for every encoder layer ``l``, a row-stochastic token-to-token matrix
``M_l[i, j]`` (how much token ``j`` of the layer's input contributes to token ``i`` of its
output), and aggregate the layers by *attention rollout*: ``R = M_L @ ... @ M_2 @ M_1``. The score
of input token ``k`` is the pooled token's row of ``R``: ``R[CLS, k]`` for BERT-style models.

They read the same captured internals as :class:`~captum_decompx.DecompX`
(:func:`~captum_decompx.core.capture.capture_internals` and the architecture adapters): the model is
hooked, never edited. Both are defined for post-LN encoders (BERT, RoBERTa, ELECTRA, DistilBERT).

Shared notation, for one post-LN layer with input ``x`` (batch, seq, d), attention probabilities
``alpha[h, i, j]``, value map ``W_v, b_v`` and output map ``W_O`` (split per head):

    f_h(x_j) = (x_j @ W_v^h + b_v^h) @ W_O^h          (Kobayashi et al., 2020)
    z_ij     = sum_h alpha[h, i, j] * f_h(x_j) + [i == j] * x_j

``z_ij`` is token ``j``'s share of the residual stream of token ``i``; summed over ``j`` it is the
input of the first LayerNorm minus the output bias ``b_O``. A LayerNorm with the real statistics of
its captured input is linear on the pieces: ``LN(z_ij) = gamma * (z_ij - mean(z_ij)) / s_i``, with
``s_i = sqrt(var(u_i) + eps)`` of the real input ``u_i`` (its bias ``beta`` is left out of the pieces).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .adapters import resolve
from .components import BiasMode, Settings, normalize
from .core.capture import Captured
from .core.decomposition import affine, norm_params, padding_mask, pool_weights
from .core.hooked_attribution import HookedModelAttribution, Inputs, captum_entry_point, in_call_modes

_NO_BIAS = Settings(bias_mode=BiasMode.DROP)
ROW_EPS = 1e-12


def attention_rollout(layer_matrices: list[Tensor]) -> Tensor:
    """Aggregate per-layer token-to-token matrices by attention rollout (Abnar & Zuidema, 2020).

    The residual connection is already part of GlobEnc's and ALTI's matrices, so no identity is
    added: ``R = M_L @ ... @ M_1``.

    Args:
        layer_matrices: per layer, in execution order, (batch, seq, seq) with rows indexing the
            layer's output tokens and columns its input tokens.

    Returns:
        (batch, seq, seq): ``R[b, i, k]``, the share of input token ``k`` in the last layer's
        token ``i``.
    """
    if not layer_matrices:
        raise ValueError("attention_rollout needs at least one layer matrix.")
    rollout = layer_matrices[0]
    for matrix in layer_matrices[1:]:
        rollout = matrix @ rollout
    return rollout


class _RolloutAttribution(HookedModelAttribution):
    """Common machinery: capture the forward pass, build per-layer matrices, roll them out.

    The constructor, the argument handling and the checks (inputs, model mode, attention mask)
    are :class:`~captum_decompx.core.hooked_attribution.HookedModelAttribution`'s, shared with DecompX.
    """

    def _check_adapter(self) -> None:
        if self.adapter.norm_position != "post":
            raise NotImplementedError(
                f"{type(self).__name__} is defined for post-LN encoders (BERT, RoBERTa, ELECTRA, "
                f"DistilBERT); the adapter {self.adapter.name!r} describes a pre-LN model."
            )
        if self.adapter.pooling == "each":
            raise NotImplementedError(
                f"{type(self).__name__} scores the tokens by the pooled token's row of the rollout; the "
                f"adapter {self.adapter.name!r} has a head at every position (question answering, token "
                "classification, masked LM, a bare encoder). Use DecompX for these models."
            )

    @captum_entry_point
    def attribute(self, inputs: Inputs, target: Any = None, additional_forward_args: Any = None) -> Inputs:
        """Score every input token by the pooled token's row of the rollout.

        Args:
            inputs: input ids (batch, seq), or a 1-tuple of them.
            target: accepted for Captum compatibility and ignored: the scores do not depend on
                the class.
            additional_forward_args: passed to the forward function after the inputs (attention
                mask, token type ids).

        Returns:
            (batch, seq) nonnegative scores summing to one over the real tokens of each example,
            0 at padding (a 1-tuple when the inputs were one).
        """
        as_tuple = isinstance(inputs, tuple)
        with self._call_modes():
            matrices, captured = self._layer_matrices(inputs, additional_forward_args)
        real = padding_mask(captured)
        weights = pool_weights(self.adapter, real, matrices[0].dtype, captured.pooling)
        scores = torch.einsum("bi,bik->bk", weights, attention_rollout(matrices))
        scores = scores * real.to(scores.dtype)
        scores = scores.to(captured.logits.dtype)
        return (scores,) if as_tuple else scores

    @in_call_modes
    def layer_matrices(self, inputs: Inputs, additional_forward_args: Any = None) -> list[Tensor]:
        """The per-layer row-stochastic matrices, before rollout.

        Returns:
            per layer, (batch, seq, seq): ``M_l[b, i, j]`` for output token ``i``, input token ``j``.
        """
        return self._layer_matrices(inputs, additional_forward_args)[0]

    # Internals -------------------------------------------------------------------------------

    def _capture(self, inputs: Inputs, additional_forward_args: Any) -> Captured:
        input_ids, _ = self._input_ids(inputs)
        return self._capture_forward(input_ids, additional_forward_args, tap=False).captured

    def _layer_matrices(self, inputs, additional_forward_args) -> tuple[list[Tensor], Captured]:
        captured = self._capture(inputs, additional_forward_args)
        dtype = self._compute_dtype()
        paths = self.adapter.layer
        matrices = []
        hidden = captured.layer_input
        with torch.no_grad():
            for layer, record in zip(self.adapter.layer_modules(self.model), captured.layers):
                pieces = _attention_residual_pieces(layer, paths, hidden.to(dtype), record.attention_probs.to(dtype), dtype)
                matrices.append(self._layer_matrix(layer, paths, pieces, record, dtype))
                # The next layer's input: the real output of this layer's last LayerNorm.
                hidden = resolve(layer, paths.ffn_norm)(record.ffn_norm_input)
        return matrices, captured

    def _layer_matrix(self, layer: nn.Module, paths, pieces: Tensor, record, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError


def _attention_residual_pieces(layer: nn.Module, paths, hidden: Tensor, probs: Tensor, dtype: torch.dtype) -> Tensor:
    """``z[b, i, j] = sum_h alpha[b, h, i, j] * f_h(x_j) + [i == j] * x_j`` (see the module docstring).

    Args:
        hidden: (batch, seq, d), the layer's real input ``x``.
        probs: (batch, heads, seq, seq), post-softmax.

    Returns:
        (batch, seq, seq, d).
    """
    value = affine(layer, paths.value, dtype)
    output = affine(layer, paths.attention_output, dtype)
    heads = probs.shape[1]
    d_model, inner = output.weight.shape
    head_dim = inner // heads
    values = hidden @ value.weight.T
    if value.bias is not None:
        values = values + value.bias
    batch, seq, _ = values.shape
    kv_heads = values.shape[-1] // head_dim
    values = values.view(batch, seq, kv_heads, head_dim).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
    if kv_heads != heads:
        values = values.repeat_interleave(heads // kv_heads, dim=1)
    transformed = torch.einsum("bhjc,dhc->bhjd", values, output.weight.view(d_model, heads, head_dim))
    pieces = torch.einsum("bhij,bhjd->bijd", probs, transformed)
    pieces.diagonal(dim1=1, dim2=2).add_(hidden.transpose(1, 2))
    return pieces


def _normalize_rows(scores: Tensor) -> Tensor:
    """Divide each row by its sum; a row that is all zero becomes the identity row."""
    totals = scores.sum(-1, keepdim=True)
    eye = torch.eye(scores.shape[-1], dtype=scores.dtype, device=scores.device).expand_as(scores)
    return torch.where(totals > ROW_EPS, scores / totals.clamp(min=ROW_EPS), eye)


class GlobEnc(_RolloutAttribution):
    """GlobEnc (Modarressi, Fayyaz, Yaghoobzadeh, Pilehvar, NAACL 2022) as a Captum attribution.

    *GlobEnc: Quantifying Global Token Attribution by Incorporating the Whole Encoder Layer in
    Transformers.* Per layer, the norm-based analysis of Kobayashi et al. (2021) extended to the
    whole encoder layer except the feed-forward network: the pieces ``z_ij`` of the attention block
    and its residual (module docstring) are passed through both LayerNorms, each linearized with
    the real statistics of its captured input and without its bias,

        N_l[i, j] = || LN2(LN1(z_ij)) ||_2,        M_l[i, j] = N_l[i, j] / sum_j' N_l[i, j'],

    and the layers are aggregated by rollout, ``R = M_L ... M_1``; token ``k`` scores ``R[CLS, k]``
    (the pooled token's row). The output bias ``b_O`` and the LayerNorm biases belong to no token
    and are left out, as in the paper; the value bias is part of ``f``.

    Args:
        forward_func: the model, or a callable ``forward_func(input_ids, *additional_forward_args)``.
        model: the Hugging Face model whose modules are hooked; defaults to ``forward_func``.
        adapter: the architecture adapter; looked up by ``model.config.model_type`` when omitted.

    Example::

        globenc = GlobEnc(model)
        scores = globenc.attribute(input_ids, additional_forward_args=(attention_mask,))  # (B, N)
    """

    @classmethod
    def get_name(cls) -> str:
        return "GlobEnc"

    def _layer_matrix(self, layer, paths, pieces, record, dtype):
        first = normalize(
            pieces, record.attention_norm_input.to(dtype), norm_params(resolve(layer, paths.attention_norm), dtype), _NO_BIAS
        )
        second = normalize(first, record.ffn_norm_input.to(dtype), norm_params(resolve(layer, paths.ffn_norm), dtype), _NO_BIAS)
        return _normalize_rows(torch.linalg.vector_norm(second, dim=-1))


class ALTI(_RolloutAttribution):
    """ALTI (Ferrando, Gallego, Costa-jussa, EMNLP 2022) as a Captum attribution.

    *Measuring the Mixing of Contextual Information in the Transformer.* Per layer, the
    *transformed vectors* ``T_i(x_j) = LN1(z_ij)`` (the attention block's pieces and residual,
    module docstring, through the first LayerNorm linearized with its real statistics and
    without its bias) are compared with the real output ``x~_i`` of the first LayerNorm in the
    L1 norm:

        c_ij = max(0, ||x~_i||_1 - ||x~_i - T_i(x_j)||_1),     M_l[i, j] = c_ij / sum_j' c_ij',

    (a row with no positive contribution becomes the identity row). The layers are aggregated by
    rollout, ``R = M_L ... M_1``, and token ``k`` scores ``R[CLS, k]`` (the pooled token's row).
    The feed-forward network and the second LayerNorm are not analysed, as in the paper.

    Args:
        forward_func: the model, or a callable ``forward_func(input_ids, *additional_forward_args)``.
        model: the Hugging Face model whose modules are hooked; defaults to ``forward_func``.
        adapter: the architecture adapter; looked up by ``model.config.model_type`` when omitted.
    """

    @classmethod
    def get_name(cls) -> str:
        return "ALTI"

    def _layer_matrix(self, layer, paths, pieces, record, dtype):
        norm_module = resolve(layer, paths.attention_norm)
        transformed = normalize(pieces, record.attention_norm_input.to(dtype), norm_params(norm_module, dtype), _NO_BIAS)
        real_output = norm_module(record.attention_norm_input).to(dtype)  # (batch, seq, d), x~_i
        distance = torch.linalg.vector_norm(real_output.unsqueeze(2) - transformed, ord=1, dim=-1)
        own = torch.linalg.vector_norm(real_output, ord=1, dim=-1).unsqueeze(-1)
        return _normalize_rows((own - distance).clamp(min=0))


__all__ = ["ALTI", "GlobEnc", "attention_rollout"]
