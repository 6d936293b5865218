"""A slow, literal DecompX written from ``docs/decompx-spec.md``, for tests of values.

Nothing here imports ``captum_decompx``. A test reads a model's weights into the plain containers
below, recomputes the model's forward pass literally in float64 (:func:`real_forward`, which the
test checks against the model's own logits), and decomposes that forward pass as the spec words it
(:func:`decompose`), one input token ``k`` at a time. The engine is then compared with the result
through the public ``DecompX`` API only.

Shapes are per example (no batch axis): hidden states ``(N, d)``, a decomposition ``X[i, k, :]``
of shape ``(rows, N, d)`` whose sum over ``k`` is the hidden state of row ``i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

DTYPE = torch.float64
ZERO_ORIGIN_EPS = 1e-12  # theta = f(a) / (a + 1e-12), and f'(0) where a == 0 exactly
RULE_EPS = 1e-12  # w[i, k] = s[i, k] / (sum_k' s[i, k'] + 1e-12)

# Bias modes: "rule" spreads every bias over the tokens (DecompX); "drop" leaves every bias out
# (the paper's "w/o bias"), except what is added to a token's own state before any mixing.
MODES = ("rule", "drop")


# ----------------------------------------------------------------------------------------------
# The model, as plain float64 tensors


@dataclass
class Affine:
    """``x @ weight.T + bias``; weight (out, in)."""

    weight: Tensor
    bias: Optional[Tensor]

    def __call__(self, x: Tensor) -> Tensor:
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias


@dataclass
class NormWeights:
    """LayerNorm (``kind="layer"``: centred, biased variance) or RMSNorm (``"rms"``)."""

    weight: Optional[Tensor]
    bias: Optional[Tensor]
    eps: float
    kind: str = "layer"
    # Llama's RMSNorm normalizes in float32, also in a float64 model; the real forward pass must
    # do the same to reproduce it (the decomposition uses float64 statistics of the real input).
    real_in_float32: bool = False
    # Gemma's RMSNorm stores its gain as an offset from one: it multiplies by ``1 + weight``, in
    # float32 (the real forward pass does the same to reproduce it).
    gain_is_one_plus_weight: bool = False
    # T5's RMSNorm computes its statistic and rsqrt in float32, also in a float64 model, and
    # multiplies the float64 input by that float32 factor.
    statistic_in_float32: bool = False

    def gain(self) -> Optional[Tensor]:
        """What the normalized vector is multiplied by."""
        if self.weight is None:
            return None
        return 1.0 + self.weight if self.gain_is_one_plus_weight else self.weight

    def scale(self, u: Tensor) -> float:
        """``s = sqrt(statistic(u) + eps)`` of one real input vector ``u`` (d,)."""
        if self.statistic_in_float32:
            assert self.kind == "rms"
            x = u.to(torch.float32)
            return 1.0 / float(torch.rsqrt(x.pow(2).mean() + self.eps))
        values = [float(x) for x in u]
        if self.kind == "rms":
            statistic = sum(x * x for x in values) / len(values)
        else:
            mean = sum(values) / len(values)
            statistic = sum((x - mean) ** 2 for x in values) / len(values)
        return math.sqrt(statistic + self.eps)

    def __call__(self, u: Tensor) -> Tensor:
        """The real normalization of (rows, d)."""
        out = torch.zeros_like(u)
        for i in range(u.shape[0]):
            if self.gain_is_one_plus_weight:
                assert self.kind == "rms" and self.weight is not None
                x = u[i].to(torch.float32)
                gain32 = 1.0 + self.weight.to(torch.float32)
                out[i] = (x * torch.rsqrt(x.pow(2).mean() + self.eps) * gain32).to(DTYPE)
            elif self.real_in_float32:
                assert self.kind == "rms"
                x = u[i].to(torch.float32)
                out[i] = (x * torch.rsqrt(x.pow(2).mean() + self.eps)).to(DTYPE)
            else:
                centred = u[i] if self.kind == "rms" else u[i] - u[i].mean()
                out[i] = centred / self.scale(u[i])
            if self.weight is not None and not self.gain_is_one_plus_weight:
                out[i] = out[i] * self.weight
            if self.bias is not None:
                out[i] = out[i] + self.bias
        return out


@dataclass
class Activation:
    """A pointwise nonlinearity, its derivative (for the tangent-line approximation) and its
    derivative at 0, written by hand (the zero-origin slope where the pre-activation is exactly 0:
    the limit of ``f(a) / a``; ReLU's is its left limit, 0)."""

    function: Callable[[Tensor], Tensor]
    derivative: Optional[Callable[[Tensor], Tensor]] = None
    slope_at_zero: Optional[float] = None


@dataclass
class LayerWeights:
    """One transformer layer.

    ``heads`` query heads read ``kv_heads`` key-value heads: query head ``h`` reads key-value head
    ``h // (heads // kv_heads)``. ``ffn_gate`` is set for gated units ``act(gate(x)) * ffn_in(x)``.
    ``attention_scale``, ``ffn_scale`` (d,): a layer scale multiplying each block's output before
    its residual (BEiT's ``lambda_1``/``lambda_2``, DINOv2's ``layer_scale1``/``layer_scale2``).
    ``score_bias`` (heads, N, N): added to the attention scores before the softmax (BEiT's
    relative position bias). ``allowed`` (N, N) bool: the keys each query may attend to (Swin's
    windows; None: all).
    """

    query: Affine
    key: Affine
    value: Affine
    output: Affine
    heads: int
    kv_heads: int
    norm1: NormWeights
    norm2: NormWeights
    ffn_in: Affine
    activation: Activation
    ffn_out: Affine
    ffn_gate: Optional[Affine] = None
    norm1_output: Optional[NormWeights] = None
    norm2_output: Optional[NormWeights] = None
    attention_scale: Optional[Tensor] = None
    ffn_scale: Optional[Tensor] = None
    score_bias: Optional[Tensor] = None
    allowed: Optional[Tensor] = None


@dataclass
class Merge:
    """A patch merging (Swin) of the token grid ``grid`` (height, width), rows in row-major order:
    the merged token at (r, c) is ``reduction(norm(concat(x[2r, 2c], x[2r + 1, 2c], x[2r, 2c + 1],
    x[2r + 1, 2c + 1])))``, a zero state where a place lies outside the grid (an odd side)."""

    grid: tuple[int, int]
    norm: NormWeights
    reduction: Affine

    def concatenate(self, x: Tensor) -> Tensor:
        """(height * width, d) -> (ceil(height / 2) * ceil(width / 2), 4 * d): the four states of
        each 2x2 block side by side."""
        height, width = self.grid
        dim = x.shape[-1]
        merged = []
        for r in range((height + 1) // 2):
            for c in range((width + 1) // 2):
                parts = []
                for row, col in ((2 * r, 2 * c), (2 * r + 1, 2 * c), (2 * r, 2 * c + 1), (2 * r + 1, 2 * c + 1)):
                    inside = row < height and col < width
                    parts.append(x[row * width + col] if inside else torch.zeros(dim, dtype=x.dtype))
                merged.append(torch.cat(parts))
        return torch.stack(merged)


@dataclass
class ContrastiveWeights:
    """The logits step of a two-tower image-text model: ``scale * <a / |a|, b_c / |b_c|> + bias``
    for this tower's embedding ``a`` (d,) and every row ``b_c`` of ``other`` (C, d), the other
    tower's embeddings, which are held fixed. Decomposed with both norms frozen at their real values."""

    other: Tensor
    scale: float
    bias: Optional[float] = None

    def __call__(self, a: Tensor) -> Tensor:
        """(d,) -> (C,)."""
        out = torch.zeros(self.other.shape[0], dtype=DTYPE)
        for c in range(self.other.shape[0]):
            out[c] = self.scale * float(a @ self.other[c]) / (float(a.norm()) * float(self.other[c].norm()))
        return out if self.bias is None else out + self.bias


@dataclass
class ProbeWeights:
    """An attention-pooling head: the learned query ``probe`` (d,) attends to every position with
    ``heads`` heads, then ``a + ffn_out(act(ffn_in(norm(a))))`` of the attention's output ``a``."""

    probe: Tensor
    query: Affine
    key: Affine
    value: Affine
    output: Affine
    heads: int
    norm: NormWeights
    ffn_in: Affine
    activation: Activation
    ffn_out: Affine


@dataclass
class ModelWeights:
    """A whole model: layers in execution order, where the norms sit, the final norm, the head.

    ``head`` is a list of :class:`Affine`, :class:`Activation`, :class:`NormWeights` and
    :class:`ContrastiveWeights` steps. ``probe``: an attention-pooling head that reads every
    position, in place of reading one row.
    ``rotary(x, head_dim)`` rotates (N, head_dim) queries or keys by their positions.
    ``softmax(scores)`` is the attention softmax over the last axis.
    ``merges``: per layer index, the patch merging after that layer (Swin's stages).
    ``score_scale`` multiplies ``q k^T`` (None: ``1 / sqrt(head_dim)``); ``position_bias(N)``
    (heads, N, N) is added to the scores (T5's relative position bias).
    """

    layers: list[LayerWeights]
    pre_norm: bool
    head: list
    final_norm: Optional[NormWeights] = None
    causal: bool = False
    rotary: Optional[Callable[[Tensor], Tensor]] = None
    softmax: Callable[[Tensor], Tensor] = field(default=lambda scores: torch.softmax(scores, dim=-1))
    probe: Optional[ProbeWeights] = None
    merges: dict[int, Merge] = field(default_factory=dict)
    score_scale: Optional[float] = None
    position_bias: Optional[Callable[[int], Tensor]] = None


def float32_softmax(scores: Tensor) -> Tensor:
    """The softmax as transformers' newer eager attention computes it: in float32, also for a
    float64 model (ViT, Llama). The literal forward pass must do the same to reproduce it."""
    return torch.softmax(scores.to(torch.float32), dim=-1).to(DTYPE)


# ----------------------------------------------------------------------------------------------
# The real forward pass, recomputed, with everything nonlinear recorded


@dataclass
class LayerTrace:
    """What the spec freezes from one layer of the real forward pass.

    alpha: (heads, N, N) attention probabilities; norm1_input, norm2_input: (N, d) inputs of the
    attention block's and the feed-forward block's norms; pre_activation: (N, ffn) input of the
    activation (of the gate's activation in a gated unit); norm1_output_input, norm2_output_input:
    (N, d) inputs of the sandwich norms (None without them).
    """

    alpha: Tensor
    norm1_input: Tensor
    pre_activation: Tensor
    norm2_input: Tensor
    norm1_output_input: Optional[Tensor] = None
    norm2_output_input: Optional[Tensor] = None
    cross_alpha: Optional[Tensor] = None  # (heads, T, S), a decoder layer's cross-attention
    cross_norm_input: Optional[Tensor] = None  # (T, d), the input of its block's norm


def _scale(x: Tensor, scale: Optional[Tensor]) -> Tensor:
    """A layer scale on the last axis; ``x`` itself without one."""
    return x if scale is None else x * scale


@dataclass
class Pool:
    """A pooled vector that concatenates ``len(groups)`` weighted sums of rows: group ``g`` is
    ``sum_i groups[g][i] * x[i]`` (``{0: 1.0}`` the first token; ``{i: 1 / P for i in 1..P}`` the
    mean of the patches). DINOv2 reads ``[CLS, mean of patches]``, DeiT's teacher ``[CLS, DIST]``."""

    groups: list[dict[int, float]]


def pool_rows(x: Tensor, pooled: "int | Pool") -> Tensor:
    """The pooled vector of hidden states x (N, d): row ``pooled``, or a :class:`Pool`'s concatenation."""
    if isinstance(pooled, int):
        return x[pooled]
    parts = []
    for group in pooled.groups:
        total = torch.zeros(x.shape[-1], dtype=DTYPE)
        for row, weight in group.items():
            total = total + weight * x[row]
        parts.append(total)
    return torch.cat(parts)


@dataclass
class MeanOfHeads:
    """A head step: ``mean_g heads[g](part_g)`` over ``len(heads)`` equal parts of its input (DeiT's
    teacher: the CLS classifier on the CLS token, the distillation classifier on the distillation
    token, averaged)."""

    heads: list[Affine]

    def __call__(self, y: Tensor) -> Tensor:
        parts = y.chunk(len(self.heads), dim=-1)
        return sum(head(part) for head, part in zip(self.heads, parts)) / len(self.heads)


@dataclass
class ProbeTrace:
    """alpha: (heads, N) the probe's attention probabilities; norm_input: (d,) the input of its
    norm (the attention's output); pre_activation: (ffn,) the input of its activation."""

    alpha: Tensor
    norm_input: Tensor
    pre_activation: Tensor


@dataclass
class Trace:
    layers: list[LayerTrace]
    final_norm_input: Optional[Tensor]
    head_inputs: list[Optional[Tensor]]  # per head step: its real input (d,) for activations/norms/logits steps
    logits: Tensor  # (C,)
    probe: Optional[ProbeTrace] = None
    merge_inputs: dict[int, Tensor] = field(default_factory=dict)  # per merge: its norm's real input (N', 4d)
    hidden: Optional[Tensor] = None  # (N, d), every row after the last layer and the final norm


def _head_block(weight_or_bias: Tensor, head: int, head_dim: int) -> Tensor:
    return weight_or_bias[head * head_dim : (head + 1) * head_dim]


def real_attention(
    layer: LayerWeights,
    x: Tensor,
    model: ModelWeights,
    given_alpha: Optional[Tensor] = None,
    keys: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Multi-head attention on (N, d): returns the block's output (N, d) and alpha (heads, N, N).
    ``given_alpha`` (heads, N, N): probabilities taken as given (e.g. the model's own, for an
    attention whose scores this file does not recompute: Gemma's soft-capping, query/key norms).
    ``keys`` (N,) bool: the keys a query may attend to (the attention mask; None: all). A query
    whose every key is masked gets no attention at all (alpha row zero), as torch's fused
    ``scaled_dot_product_attention`` computes it."""
    seq = x.shape[0]
    head_dim = layer.output.weight.shape[1] // layer.heads
    group = layer.heads // layer.kv_heads
    q, k, v = layer.query(x), layer.key(x), layer.value(x)
    scale = 1.0 / math.sqrt(head_dim) if model.score_scale is None else model.score_scale
    position_bias = None if model.position_bias is None else model.position_bias(seq)
    alpha = torch.zeros(layer.heads, seq, seq, dtype=DTYPE)
    context = torch.zeros(seq, layer.heads * head_dim, dtype=DTYPE)
    for h in range(layer.heads):
        kv = h // group
        q_h = q[:, h * head_dim : (h + 1) * head_dim]
        k_h = k[:, kv * head_dim : (kv + 1) * head_dim]
        v_h = v[:, kv * head_dim : (kv + 1) * head_dim]
        if model.rotary is not None:
            q_h, k_h = model.rotary(q_h), model.rotary(k_h)
        if given_alpha is not None:
            alpha[h] = given_alpha[h]
        else:
            scores = q_h @ k_h.T * scale
            if layer.score_bias is not None:
                scores = scores + layer.score_bias[h]
            if position_bias is not None:
                scores = scores + position_bias[h]
            allowed = torch.ones(seq, seq, dtype=torch.bool)
            if model.causal:
                allowed &= ~torch.ones(seq, seq, dtype=torch.bool).triu(1)
            if keys is not None:
                allowed &= keys.view(1, seq)
            if layer.allowed is not None:
                allowed &= layer.allowed
            for i in range(seq):
                if layer.allowed is not None:  # a softmax over the query's window only, as the model runs it
                    window = allowed[i].nonzero().flatten()
                    alpha[h, i, window] = model.softmax(scores[i : i + 1, window])[0]
                elif bool(allowed[i].any()):
                    alpha[h, i] = model.softmax(scores[i : i + 1].masked_fill(~allowed[i : i + 1], float("-inf")))[0]
        context[:, h * head_dim : (h + 1) * head_dim] = alpha[h] @ v_h
    return layer.output(context), alpha


def real_forward(
    model: ModelWeights,
    embeddings: Tensor,
    pooled_row: int,
    alphas: Optional[list[Tensor]] = None,
    keys: Optional[Tensor] = None,
) -> Trace:
    """The model's forward pass on one example's embeddings (N, d), recording the spec's captures.
    ``alphas``: per layer the attention probabilities to take as given; ``keys``: (N,) bool, the
    keys a query may attend to, e.g. the padded example's attention mask (see :func:`real_attention`)."""
    x = embeddings
    traces = []
    merge_inputs: dict[int, Tensor] = {}
    for index, layer in enumerate(model.layers):
        given = None if alphas is None else alphas[index]
        if layer.norm1_output is not None:
            # sandwich: h = x + norm1o(attn(norm1(x))), then h + norm2o(ffn(norm2(h)))
            assert model.pre_norm and layer.norm2_output is not None
            norm1_input = x
            attended, alpha = real_attention(layer, layer.norm1(x), model, given, keys)
            x = x + layer.norm1_output(attended)
            norm2_input = x
            normed = layer.norm2(x)
            pre_activation = layer.ffn_gate(normed) if layer.ffn_gate is not None else layer.ffn_in(normed)
            if layer.ffn_gate is not None:
                hidden = layer.activation.function(pre_activation) * layer.ffn_in(normed)
            else:
                hidden = layer.activation.function(pre_activation)
            ffn_output = layer.ffn_out(hidden)
            x = x + layer.norm2_output(ffn_output)
            traces.append(LayerTrace(alpha, norm1_input, pre_activation, norm2_input, attended, ffn_output))
            continue
        if model.pre_norm:
            norm1_input = x
            attended, alpha = real_attention(layer, layer.norm1(x), model, given, keys)
            x = x + _scale(attended, layer.attention_scale)
            norm2_input = x
            normed = layer.norm2(x)
        else:
            attended, alpha = real_attention(layer, x, model, given, keys)
            norm1_input = x + attended
            normed = layer.norm1(norm1_input)
        if layer.ffn_gate is not None:
            pre_activation = layer.ffn_gate(normed)
            hidden = layer.activation.function(pre_activation) * layer.ffn_in(normed)
        else:
            pre_activation = layer.ffn_in(normed)
            hidden = layer.activation.function(pre_activation)
        ffn_output = layer.ffn_out(hidden)
        if model.pre_norm:
            x = x + _scale(ffn_output, layer.ffn_scale)
        else:
            norm2_input = normed + ffn_output
            x = layer.norm2(norm2_input)
        traces.append(LayerTrace(alpha, norm1_input, pre_activation, norm2_input))
        if index in model.merges:
            merge = model.merges[index]
            merge_inputs[index] = merge.concatenate(x)
            x = merge.reduction(merge.norm(merge_inputs[index]))
    final_norm_input = None
    if model.final_norm is not None:
        final_norm_input = x
        x = model.final_norm(x)
    hidden = x
    probe_trace = None
    if model.probe is not None:
        y, probe_trace = real_probe(model.probe, x)
    else:
        y = pool_rows(x, pooled_row)
    head_inputs: list[Optional[Tensor]] = []
    for step in model.head:
        if isinstance(step, MeanOfHeads):
            head_inputs.append(None)
            y = step(y)
        elif isinstance(step, Affine):
            head_inputs.append(None)
            y = step(y)
        elif isinstance(step, Activation):
            head_inputs.append(y)
            y = step.function(y)
        elif isinstance(step, ContrastiveWeights):
            head_inputs.append(y)
            y = step(y)
        else:
            head_inputs.append(y)
            y = step(y.unsqueeze(0)).squeeze(0)
    return Trace(traces, final_norm_input, head_inputs, y, probe=probe_trace, merge_inputs=merge_inputs, hidden=hidden)


def real_probe(probe: ProbeWeights, x: Tensor) -> tuple[Tensor, ProbeTrace]:
    """The attention-pooling head on (N, d): its output (d,) and what the spec freezes (torch's
    ``MultiheadAttention`` computes its softmax in the model's own dtype)."""
    seq, dim = x.shape
    head_dim = dim // probe.heads
    q = probe.query(probe.probe.unsqueeze(0))[0]
    k, v = probe.key(x), probe.value(x)
    alpha = torch.zeros(probe.heads, seq, dtype=DTYPE)
    context = torch.zeros(dim, dtype=DTYPE)
    for h in range(probe.heads):
        block = slice(h * head_dim, (h + 1) * head_dim)
        alpha[h] = torch.softmax(q[block] @ k[:, block].T / math.sqrt(head_dim), dim=-1)
        context[block] = alpha[h] @ v[:, block]
    attended = probe.output(context)
    normed = probe.norm(attended.unsqueeze(0))[0]
    pre_activation = probe.ffn_in(normed)
    return attended + probe.ffn_out(probe.activation.function(pre_activation)), ProbeTrace(alpha, attended, pre_activation)


# ----------------------------------------------------------------------------------------------
# The spec's rules, on decompositions X (rows, N, d), one token k at a time


def bias_weights(pieces: Tensor, bias: Tensor, rule: str) -> Tensor:
    """``w[i, k] = s[i, k] / (sum_k' s[i, k'] + 1e-12)`` for a bias (d,) or one per row (rows, d)."""
    rows, tokens, _ = pieces.shape
    weights = torch.zeros(rows, tokens, dtype=DTYPE)
    for i in range(rows):
        b = bias if bias.dim() == 1 else bias[i]
        scores = []
        for k in range(tokens):
            piece = pieces[i, k]
            if rule == "absdot":
                scores.append(abs(float(piece @ b)))
            elif rule == "norm":
                scores.append(float(piece.norm()))
            elif rule == "equal":
                scores.append(1.0 if bool((piece != 0).any()) else 0.0)
            elif rule == "cls":
                scores.append(1.0 if k == 0 else 0.0)
            else:
                raise AssertionError(f"no literal version of rule {rule!r}")
        total = sum(scores)
        for k in range(tokens):
            weights[i, k] = scores[k] / (total + RULE_EPS)
    return weights


def add_bias(pieces: Tensor, bias: Optional[Tensor], mode: str, rule: str) -> Tensor:
    """``V[i, k] += w[i, k] * b`` (mode "rule"); the bias is left out in mode "drop"."""
    if bias is None or mode == "drop":
        return pieces
    weights = bias_weights(pieces, bias, rule)
    out = pieces.clone()
    for k in range(pieces.shape[1]):
        for i in range(pieces.shape[0]):
            b = bias if bias.dim() == 1 else bias[i]
            out[i, k] = pieces[i, k] + weights[i, k] * b
    return out


def add_to_own_token(pieces: Tensor, bias: Optional[Tensor]) -> Tensor:
    """A bias added to a token's own state before any mixing belongs to that token, in every mode."""
    if bias is None:
        return pieces
    out = pieces.clone()
    for i in range(pieces.shape[0]):
        out[i, i] = out[i, i] + bias
    return out


def linear(pieces: Tensor, affine: Affine, mode: str, rule: str) -> Tensor:
    """``W`` on every piece ``X[:, k]``; the bias through the bias rule."""
    rows, tokens, _ = pieces.shape
    out = torch.zeros(rows, tokens, affine.weight.shape[0], dtype=DTYPE)
    for k in range(tokens):
        out[:, k] = pieces[:, k] @ affine.weight.T
    return add_bias(out, affine.bias, mode, rule)


def normalize(pieces: Tensor, real_input: Tensor, norm: NormWeights, mode: str, rule: str, *, own_bias: bool = False) -> Tensor:
    """``L[i, k] = gamma * (X[i, k] - mean_d X[i, k]) / s_i`` with ``s_i`` from the real input
    (no centring for RMSNorm); ``beta`` through the bias rule with weights from ``L``, or to each
    row's own token when the norm acts before any mixing (``own_bias``)."""
    rows, tokens, _ = pieces.shape
    out = torch.zeros_like(pieces)
    for i in range(rows):
        s_i = norm.scale(real_input[i])
        for k in range(tokens):
            piece = pieces[i, k]
            centred = piece if norm.kind == "rms" else piece - piece.mean()
            gain = norm.gain()
            out[i, k] = centred / s_i if gain is None else gain * centred / s_i
    if own_bias:
        return add_to_own_token(out, norm.bias)
    return add_bias(out, norm.bias, mode, rule)


def activate(pieces: Tensor, a: Tensor, activation: Activation, approximation: str, mode: str, rule: str) -> Tensor:
    """ZO: ``Q = f(a) / (a + 1e-12) * P`` (``f'(0) * P`` where ``a == 0``); LA: ``Q = f'(a) * P``, then ``c = f(a) - f'(a) a`` through
    the bias rule with weights from ``Q``; ReLU: ``Q = P * (a > 0)``. ``a`` is (rows, dim)."""
    rows, tokens, _ = pieces.shape
    out = torch.zeros_like(pieces)
    if approximation == "zo":
        coefficient = activation.function(a) / (a + ZERO_ORIGIN_EPS)
        if bool((a == 0).any()):
            assert activation.slope_at_zero is not None, "an exact zero needs the activation's slope_at_zero"
            coefficient = torch.where(a == 0, torch.tensor(activation.slope_at_zero, dtype=coefficient.dtype), coefficient)
    elif approximation == "la":
        coefficient = activation.derivative(a)
    else:
        coefficient = (a > 0).to(DTYPE)
    for i in range(rows):
        for k in range(tokens):
            out[i, k] = coefficient[i] * pieces[i, k]
    if approximation == "la":
        intercept = activation.function(a) - coefficient * a
        out = add_bias(out, intercept, mode, rule)
    return out


def attention(
    values_from: Tensor,
    residual: Tensor,
    layer: LayerWeights,
    alpha: Tensor,
    first: bool,
    mode: str,
    rule: str,
    scale: Optional[Tensor] = None,
) -> Tensor:
    """Steps 1-2: ``Z[i, k] = sum_h sum_j alpha[h, i, j] * (X[j, k] @ W_v^h) @ W_O^h``, then
    ``R = Z + residual`` and the attention bias through the bias rule with weights from ``R``.
    A layer scale ``scale`` (d,) multiplies ``Z`` and the attention bias before the residual.

    In the first layer the value bias belongs to each token (``V[j, j] += b_v``) and only ``b_O``
    is left; later, ``b_att = sum_h W_O^h b_v^h + b_O`` (query head ``h`` reads key-value head
    ``h // (heads // kv_heads)``).
    """
    seq, tokens, dim = values_from.shape
    head_dim = layer.output.weight.shape[1] // layer.heads
    group = layer.heads // layer.kv_heads
    values = torch.zeros(seq, tokens, layer.value.weight.shape[0], dtype=DTYPE)
    for k in range(tokens):
        values[:, k] = values_from[:, k] @ layer.value.weight.T
    if first:
        values = add_to_own_token(values, layer.value.bias)
    mixed = torch.zeros(seq, tokens, dim, dtype=DTYPE)
    for k in range(tokens):
        for i in range(seq):
            total = torch.zeros(dim, dtype=DTYPE)
            for h in range(layer.heads):
                kv = h // group
                w_o_h = layer.output.weight[:, h * head_dim : (h + 1) * head_dim]
                for j in range(seq):
                    total = total + alpha[h, i, j] * (values[j, k, kv * head_dim : (kv + 1) * head_dim] @ w_o_h.T)
            mixed[i, k] = total
    attention_bias = layer.output.bias
    if not first and layer.value.bias is not None:
        carried = torch.zeros(dim, dtype=DTYPE)
        for h in range(layer.heads):
            kv = h // group
            carried = carried + layer.output.weight[:, h * head_dim : (h + 1) * head_dim] @ _head_block(
                layer.value.bias, kv, head_dim
            )
        attention_bias = carried if attention_bias is None else carried + attention_bias
    if scale is not None:
        for k in range(tokens):
            for i in range(seq):
                mixed[i, k] = scale * mixed[i, k]
        attention_bias = None if attention_bias is None else scale * attention_bias
    return add_bias(mixed + residual, attention_bias, mode, rule)


def feed_forward(pieces: Tensor, layer: LayerWeights, a: Tensor, approximation: str, mode: str, rule: str) -> Tensor:
    """Step 4; a gated unit ``act(g) * u`` scales the decomposed ``u`` by the real ``act(g)``."""
    hidden = linear(pieces, layer.ffn_in, mode, rule)
    if layer.ffn_gate is not None:
        gate = layer.activation.function(a)
        for k in range(hidden.shape[1]):
            hidden[:, k] = gate * hidden[:, k]
    else:
        hidden = activate(hidden, a, layer.activation, approximation, mode, rule)
    return linear(hidden, layer.ffn_out, mode, rule)


def contrastive(pieces: Tensor, a: Tensor, step: ContrastiveWeights, mode: str, rule: str) -> Tensor:
    """``Y[i, k, c] = scale * <X[i, k], b_c> / (|a| |b_c|)`` with the real embedding ``a`` (d,):
    both norms frozen; ``bias`` (one per logit) through the bias rule."""
    rows, tokens, _ = pieces.shape
    classes = step.other.shape[0]
    out = torch.zeros(rows, tokens, classes, dtype=DTYPE)
    for i in range(rows):
        for k in range(tokens):
            for c in range(classes):
                out[i, k, c] = step.scale * float(pieces[i, k] @ step.other[c]) / (float(a.norm()) * float(step.other[c].norm()))
    bias = None if step.bias is None else torch.full((classes,), step.bias, dtype=DTYPE)
    return add_bias(out, bias, mode, rule)


def probe_pool(pieces: Tensor, probe: ProbeWeights, trace: ProbeTrace, approximation: str, mode: str, rule: str) -> Tensor:
    """The attention-pooling head on a decomposition (N, N, d) of every position: one row (1, N, d).

    ``A[k] = sum_h sum_j alpha[h, j] * (X[j, k] @ W_v^h) @ W_O^h``; the attention bias
    ``sum_h W_O^h b_v^h + b_O`` (each row of alpha sums to one) through the bias rule; then
    ``A + ffn_out(act(ffn_in(norm(A))))`` as in a layer, with the real norm input and pre-activation.
    """
    seq, tokens, dim = pieces.shape
    head_dim = dim // probe.heads
    values = torch.zeros(seq, tokens, dim, dtype=DTYPE)
    for k in range(tokens):
        values[:, k] = pieces[:, k] @ probe.value.weight.T
    mixed = torch.zeros(1, tokens, dim, dtype=DTYPE)
    for k in range(tokens):
        total = torch.zeros(dim, dtype=DTYPE)
        for h in range(probe.heads):
            w_o_h = probe.output.weight[:, h * head_dim : (h + 1) * head_dim]
            for j in range(seq):
                total = total + trace.alpha[h, j] * (values[j, k, h * head_dim : (h + 1) * head_dim] @ w_o_h.T)
        mixed[0, k] = total
    bias = probe.output.bias
    if probe.value.bias is not None:
        carried = probe.output.weight @ probe.value.bias
        bias = carried if bias is None else carried + bias
    mixed = add_bias(mixed, bias, mode, rule)
    normed = normalize(mixed, trace.norm_input.unsqueeze(0), probe.norm, mode, rule)
    hidden = activate(
        linear(normed, probe.ffn_in, mode, rule), trace.pre_activation.unsqueeze(0), probe.activation, approximation, mode, rule
    )
    return mixed + linear(hidden, probe.ffn_out, mode, rule)


def propagate_layer(
    model: ModelWeights,
    layer: LayerWeights,
    real: LayerTrace,
    x: Tensor,
    first: bool,
    mode: str,
    rule: str,
    ffn_approximation: str,
) -> Tensor:
    """One encoder or decoder-only layer on a decomposition ``x`` (rows, N, d), as the model's norms sit."""
    if layer.norm1_output is not None:
        # sandwich: x -> h = x + norm1o(attn(norm1(x))) -> h + norm2o(ffn(norm2(h))). The
        # attention bias is part of the sublayer's output, before its norm: it is spread with
        # weights from the attention's own pieces Z (no residual in the sum yet).
        normed = normalize(x, real.norm1_input, layer.norm1, mode, rule, own_bias=first)
        z = attention(normed, torch.zeros_like(x), layer, real.alpha, first, mode, rule)
        h = x + normalize(z, real.norm1_output_input, layer.norm1_output, mode, rule)
        normed2 = normalize(h, real.norm2_input, layer.norm2, mode, rule)
        f = feed_forward(normed2, layer, real.pre_activation, ffn_approximation, mode, rule)
        return h + normalize(f, real.norm2_output_input, layer.norm2_output, mode, rule)
    if model.pre_norm:
        # x -> h = x + attn(norm1(x)) -> h + ffn(norm2(h)); the first norm acts before any
        # mixing, so its bias belongs to each token.
        normed = normalize(x, real.norm1_input, layer.norm1, mode, rule, own_bias=first)
        h = attention(normed, x, layer, real.alpha, first, mode, rule, scale=layer.attention_scale)
        normed2 = normalize(h, real.norm2_input, layer.norm2, mode, rule)
        f = feed_forward(normed2, layer, real.pre_activation, ffn_approximation, mode, rule)
        if layer.ffn_scale is not None:  # a layer scale: a linear map without bias, piece by piece
            for k in range(f.shape[1]):
                f[:, k] = layer.ffn_scale * f[:, k]
        return h + f
    # x -> h = norm1(x + attn(x)) -> norm2(h + ffn(h))
    h = normalize(attention(x, x, layer, real.alpha, first, mode, rule), real.norm1_input, layer.norm1, mode, rule)
    f = feed_forward(h, layer, real.pre_activation, ffn_approximation, mode, rule)
    return normalize(h + f, real.norm2_input, layer.norm2, mode, rule)


@dataclass
class Decomposition:
    """contributions: (N, C), token k's share of every class logit; layer_outputs: per layer the
    decomposition X_l (N, N, d) of every token after layer l."""

    contributions: Tensor
    layer_outputs: list[Tensor]


def decompose(
    model: ModelWeights,
    embeddings: Tensor,
    trace: Trace,
    pooled_row: int,
    *,
    mode: str = "rule",
    rule: str = "absdot",
    ffn_approximation: str = "zo",
    head_approximation: str = "zo",
) -> Decomposition:
    """DecompX of one example, literally: start from ``X0[i, k] = e_i [i == k]`` and propagate."""
    assert mode in MODES
    seq, dim = embeddings.shape
    x = torch.zeros(seq, seq, dim, dtype=DTYPE)
    for k in range(seq):
        x[k, k] = embeddings[k]
    layer_outputs = []
    for index, (layer, real) in enumerate(zip(model.layers, trace.layers)):
        x = propagate_layer(model, layer, real, x, index == 0, mode, rule, ffn_approximation)
        if index in model.merges:  # piece k of a merged token: the four tokens' pieces k, side by side
            merge = model.merges[index]
            merged = torch.stack([merge.concatenate(x[:, k]) for k in range(seq)], dim=1)
            normed = normalize(merged, trace.merge_inputs[index], merge.norm, mode, rule)
            x = linear(normed, merge.reduction, mode, rule)
        layer_outputs.append(x)
    if model.final_norm is not None:
        x = normalize(x, trace.final_norm_input, model.final_norm, mode, rule)
    if model.probe is not None:
        assert trace.probe is not None
        y = probe_pool(x, model.probe, trace.probe, ffn_approximation, mode, rule)
    else:
        y = torch.zeros(1, seq, pool_rows(x[:, 0], pooled_row).shape[0], dtype=DTYPE)  # (1, N, pooled width)
        for k in range(seq):  # pooling: a linear selection of rows, piece by piece
            y[0, k] = pool_rows(x[:, k], pooled_row)
    for step, real_input in zip(model.head, trace.head_inputs):
        if isinstance(step, MeanOfHeads):  # each map on its part, its bias spread over its own output
            parts = y.chunk(len(step.heads), dim=-1)
            outputs = [linear(part, head, mode, rule) for head, part in zip(step.heads, parts)]
            y = sum(outputs[1:], outputs[0]) / len(step.heads)
        elif isinstance(step, Affine):
            y = linear(y, step, mode, rule)
        elif isinstance(step, Activation):
            y = activate(y, real_input.unsqueeze(0), step, head_approximation, mode, rule)
        elif isinstance(step, ContrastiveWeights):
            y = contrastive(y, real_input, step, mode, rule)
        else:
            y = normalize(y, real_input.unsqueeze(0), step, mode, rule)
    return Decomposition(y[0], layer_outputs)


# ----------------------------------------------------------------------------------------------
# Encoder-decoders: the decoder's rows decomposed over the target prefix and the source


@dataclass
class CrossWeights:
    """A decoder layer's cross-attention (queries from the decoder, keys and values from the
    encoder's output) and its block's norm; ``scale`` multiplies the scores ``q k^T``;
    ``softmax(scores)`` is the attention softmax over the last axis."""

    query: Affine
    key: Affine
    value: Affine
    output: Affine
    heads: int
    norm: NormWeights
    scale: float
    softmax: Callable[[Tensor], Tensor] = field(default=lambda scores: torch.softmax(scores, dim=-1))


@dataclass
class Seq2SeqWeights:
    """An encoder-decoder: the encoder (``head`` empty), the decoder (``causal``; ``head`` the LM
    head, a single :class:`Affine`) and one :class:`CrossWeights` per decoder layer."""

    encoder: ModelWeights
    decoder: ModelWeights
    cross: list[CrossWeights]


@dataclass
class Seq2SeqTrace:
    encoder: Trace  # its ``hidden``: the encoder's output (S, d)
    decoder: list[LayerTrace]  # with cross_alpha and cross_norm_input
    decoder_final_norm_input: Optional[Tensor]
    logits: Tensor  # (T, vocab): every target position's logits


def real_cross_attention(cross: CrossWeights, x: Tensor, memory: Tensor, keys: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Cross-attention of the decoder rows ``x`` (T, d) over the encoder's output ``memory``
    (S, d); ``keys`` (S,) bool: the source tokens that may be attended to. Returns the block's
    output (T, d) and alpha (heads, T, S)."""
    rows, sources = x.shape[0], memory.shape[0]
    head_dim = cross.output.weight.shape[1] // cross.heads
    q, k, v = cross.query(x), cross.key(memory), cross.value(memory)
    alpha = torch.zeros(cross.heads, rows, sources, dtype=DTYPE)
    context = torch.zeros(rows, cross.heads * head_dim, dtype=DTYPE)
    for h in range(cross.heads):
        block = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[:, block] @ k[:, block].T * cross.scale
        if keys is not None:
            scores = scores.masked_fill(~keys.view(1, sources), float("-inf"))
        alpha[h] = cross.softmax(scores)
        context[:, block] = alpha[h] @ v[:, block]
    return cross.output(context), alpha


def _ffn_of(layer: LayerWeights, normed: Tensor) -> tuple[Tensor, Tensor]:
    """The feed-forward unit's real output and its activation's (or gate's) input."""
    if layer.ffn_gate is not None:
        pre_activation = layer.ffn_gate(normed)
        return layer.ffn_out(layer.activation.function(pre_activation) * layer.ffn_in(normed)), pre_activation
    pre_activation = layer.ffn_in(normed)
    return layer.ffn_out(layer.activation.function(pre_activation)), pre_activation


def real_seq2seq_forward(
    weights: Seq2SeqWeights,
    source_embeddings: Tensor,
    target_embeddings: Tensor,
    *,
    encoder_alphas: Optional[list[Tensor]] = None,
    decoder_alphas: Optional[list[Tensor]] = None,
) -> Seq2SeqTrace:
    """The model's forward pass on one example (source (S, d), target prefix (T, d) embeddings),
    recording the spec's captures; self-attention probabilities may be taken as given (T5's
    relative position bias only shapes them)."""
    encoder = real_forward(weights.encoder, source_embeddings, 0, alphas=encoder_alphas)
    memory = encoder.hidden
    assert memory is not None
    decoder = weights.decoder
    x = target_embeddings
    traces = []
    for index, (layer, cross) in enumerate(zip(decoder.layers, weights.cross)):
        given = None if decoder_alphas is None else decoder_alphas[index]
        if decoder.pre_norm:
            # x -> h = x + attn(norm1(x)) -> c = h + cross(norm_c(h)) -> c + ffn(norm2(c))
            norm1_input = x
            attended, alpha = real_attention(layer, layer.norm1(x), decoder, given)
            h = x + attended
            cross_norm_input = h
            crossed, cross_alpha = real_cross_attention(cross, cross.norm(h), memory, None)
            c = h + crossed
            norm2_input = c
            ffn_output, pre_activation = _ffn_of(layer, layer.norm2(c))
            x = c + ffn_output
        else:
            # x -> h = norm1(x + attn(x)) -> c = norm_c(h + cross(h)) -> norm2(c + ffn(c))
            attended, alpha = real_attention(layer, x, decoder, given)
            norm1_input = x + attended
            h = layer.norm1(norm1_input)
            crossed, cross_alpha = real_cross_attention(cross, h, memory, None)
            cross_norm_input = h + crossed
            c = cross.norm(cross_norm_input)
            ffn_output, pre_activation = _ffn_of(layer, c)
            norm2_input = c + ffn_output
            x = layer.norm2(norm2_input)
        traces.append(
            LayerTrace(
                alpha, norm1_input, pre_activation, norm2_input, cross_alpha=cross_alpha, cross_norm_input=cross_norm_input
            )
        )
    final_norm_input = None
    if decoder.final_norm is not None:
        final_norm_input = x
        x = decoder.final_norm(x)
    (head,) = decoder.head
    return Seq2SeqTrace(encoder, traces, final_norm_input, head(x))


def cross_attention(encoder_pieces: Tensor, residual: Tensor, cross: CrossWeights, alpha: Tensor, mode: str, rule: str) -> Tensor:
    """``Z[i, k] = sum_h sum_s alpha[h, i, s] * (E[s, k] @ W_v^h) @ W_O^h`` over the decomposed
    encoder output ``E`` (S, P, d), then ``R = Z + residual`` (T, P, d) and the block's bias
    ``sum_h W_O^h b_v^h + b_O`` through the bias rule with weights from ``R`` (the encoder's output
    is already mixed: no bias belongs to a token here)."""
    sources, tokens, dim = encoder_pieces.shape
    rows = residual.shape[0]
    head_dim = cross.output.weight.shape[1] // cross.heads
    values = torch.zeros(sources, tokens, cross.value.weight.shape[0], dtype=DTYPE)
    for k in range(tokens):
        values[:, k] = encoder_pieces[:, k] @ cross.value.weight.T
    mixed = torch.zeros(rows, tokens, dim, dtype=DTYPE)
    for k in range(tokens):
        for i in range(rows):
            total = torch.zeros(dim, dtype=DTYPE)
            for h in range(cross.heads):
                block = slice(h * head_dim, (h + 1) * head_dim)
                for s_ in range(sources):
                    total = total + alpha[h, i, s_] * (values[s_, k, block] @ cross.output.weight[:, block].T)
            mixed[i, k] = total
    bias = cross.output.bias
    if cross.value.bias is not None:
        carried = torch.zeros(dim, dtype=DTYPE)
        for h in range(cross.heads):
            block = slice(h * head_dim, (h + 1) * head_dim)
            carried = carried + cross.output.weight[:, block] @ cross.value.bias[block]
        bias = carried if bias is None else carried + bias
    return add_bias(mixed + residual, bias, mode, rule)


@dataclass
class Seq2SeqDecomposition:
    """contributions: (T, T + S, vocab): row ``t``, piece ``k``: target-prefix token ``k`` for
    ``k < T``, source token ``k - T`` after; every target position's logits decomposed."""

    contributions: Tensor


def decompose_seq2seq(
    weights: Seq2SeqWeights,
    source_embeddings: Tensor,
    target_embeddings: Tensor,
    trace: Seq2SeqTrace,
    *,
    mode: str = "rule",
    rule: str = "absdot",
    ffn_approximation: str = "zo",
) -> Seq2SeqDecomposition:
    """DecompX of an encoder-decoder, literally: the encoder from ``X0[s, k] = e_s [s == k]``;
    the decoder from ``Y0[t, k] = f_t [t == k]`` over ``T + S`` pieces, the source pieces entering
    through each layer's cross-attention; then the LM head on every row."""
    assert mode in MODES
    sources, dim = source_embeddings.shape
    targets = target_embeddings.shape[0]
    encoder = weights.encoder
    x = torch.zeros(sources, sources, dim, dtype=DTYPE)
    for k in range(sources):
        x[k, k] = source_embeddings[k]
    for index, (layer, real) in enumerate(zip(encoder.layers, trace.encoder.layers)):
        x = propagate_layer(encoder, layer, real, x, index == 0, mode, rule, ffn_approximation)
    if encoder.final_norm is not None:
        x = normalize(x, trace.encoder.final_norm_input, encoder.final_norm, mode, rule)
    memory = torch.zeros(sources, targets + sources, dim, dtype=DTYPE)
    memory[:, targets:] = x
    decoder = weights.decoder
    y = torch.zeros(targets, targets + sources, dim, dtype=DTYPE)
    for t in range(targets):
        y[t, t] = target_embeddings[t]
    for index, (layer, cross, real) in enumerate(zip(decoder.layers, weights.cross, trace.decoder)):
        first = index == 0
        if decoder.pre_norm:
            # the cross block's norm feeds only its queries, which act through the real alpha
            normed = normalize(y, real.norm1_input, layer.norm1, mode, rule, own_bias=first)
            h = attention(normed, y, layer, real.alpha, first, mode, rule)
            c = cross_attention(memory, h, cross, real.cross_alpha, mode, rule)
            normed2 = normalize(c, real.norm2_input, layer.norm2, mode, rule)
            y = c + feed_forward(normed2, layer, real.pre_activation, ffn_approximation, mode, rule)
        else:
            h = normalize(attention(y, y, layer, real.alpha, first, mode, rule), real.norm1_input, layer.norm1, mode, rule)
            c = normalize(
                cross_attention(memory, h, cross, real.cross_alpha, mode, rule), real.cross_norm_input, cross.norm, mode, rule
            )
            f = feed_forward(c, layer, real.pre_activation, ffn_approximation, mode, rule)
            y = normalize(c + f, real.norm2_input, layer.norm2, mode, rule)
    if decoder.final_norm is not None:
        y = normalize(y, trace.decoder_final_norm_input, decoder.final_norm, mode, rule)
    (head,) = decoder.head
    return Seq2SeqDecomposition(linear(y, head, mode, rule))


# ----------------------------------------------------------------------------------------------
# Activations, written out


def gelu(a: Tensor) -> Tensor:
    """Exact GELU ``a * Phi(a)``."""
    return 0.5 * a * (1.0 + torch.erf(a / math.sqrt(2.0)))


def gelu_derivative(a: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0))) + a * torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)


def gelu_tanh(a: Tensor) -> Tensor:
    """The tanh approximation of GELU (GPT-2's and ALBERT's ``gelu_new``)."""
    return 0.5 * a * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3)))


def quick_gelu(a: Tensor) -> Tensor:
    """CLIP's ``a * sigmoid(1.702 a)``."""
    return a / (1.0 + torch.exp(-1.702 * a))


def silu(a: Tensor) -> Tensor:
    return a / (1.0 + torch.exp(-a))


def tanh_derivative(a: Tensor) -> Tensor:
    return 1.0 - torch.tanh(a) ** 2


def relu(a: Tensor) -> Tensor:
    return torch.where(a > 0, a, torch.zeros_like(a))


def relu_derivative(a: Tensor) -> Tensor:
    return (a > 0).to(a.dtype)


TANH = Activation(torch.tanh, tanh_derivative, slope_at_zero=1.0)
GELU = Activation(gelu, gelu_derivative, slope_at_zero=0.5)
GELU_TANH = Activation(gelu_tanh, slope_at_zero=0.5)
SILU = Activation(silu, slope_at_zero=0.5)
QUICK_GELU = Activation(quick_gelu, slope_at_zero=0.5)
RELU = Activation(relu, relu_derivative, slope_at_zero=0.0)


# ----------------------------------------------------------------------------------------------
# Test models


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter under ``seed`` (norm gains ~ 1 + N(0, 0.3^2), embeddings
    ~ N(0, 0.5^2), other matrices ~ N(0, 0.3^2), other vectors ~ N(0, 0.2^2)) so that every bias
    and gain matters; return the model in float64 and eval mode."""
    generator = torch.Generator().manual_seed(seed)
    norm_gains, embeddings = set(), set()
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or "rmsnorm" in type(module).__name__.lower()
        if is_norm and getattr(module, "weight", None) is not None:
            norm_gains.add(id(module.weight))
        if isinstance(module, torch.nn.Embedding):
            embeddings.add(id(module.weight))
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if id(parameter) in norm_gains:
                value = 1.0 + 0.3 * noise
            elif id(parameter) in embeddings:
                value = 0.5 * noise
            else:
                value = (0.3 if parameter.dim() > 1 else 0.2) * noise
            parameter.copy_(value)
    return model.double().eval()


def affine_of(module: torch.nn.Module) -> Affine:
    """An ``nn.Linear``'s weight and bias, as float64 copies."""
    bias = None if module.bias is None else module.bias.detach().to(DTYPE)
    return Affine(module.weight.detach().to(DTYPE), bias)


def affine_block_of(module: torch.nn.Module, index: int, count: int) -> Affine:
    """The ``index``-th of ``count`` equal blocks of an ``nn.Linear``'s output features (a fused
    map's part), as float64 copies."""
    size = module.weight.shape[0] // count
    rows = slice(index * size, (index + 1) * size)
    bias = None if module.bias is None else module.bias.detach()[rows].to(DTYPE)
    return Affine(module.weight.detach()[rows].to(DTYPE), bias)


def norm_of(module: torch.nn.Module, kind: str = "layer") -> NormWeights:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    eps = module.eps if kind == "layer" else getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return NormWeights(
        None if weight is None else weight.detach().to(DTYPE),
        None if bias is None else bias.detach().to(DTYPE),
        float(eps),
        kind,
    )


def padded_tokens(lengths: tuple[int, ...], vocab: int, seed: int, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded random ids in [2, vocab) (never the padding id) and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(2, vocab, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


def assert_matches(actual: Tensor, expected: Tensor, scale: float, what: str, rel: float = 1e-6) -> None:
    """``|actual - expected| <= rel * max(1, scale)`` elementwise, with a readable message."""
    tolerance = rel * max(1.0, scale)
    difference = float((actual.to(DTYPE) - expected.to(DTYPE)).abs().max()) if expected.numel() else 0.0
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert difference <= tolerance, f"{what}: max |difference| {difference:.3e} > {tolerance:.1e}\n{actual}\n{expected}"
