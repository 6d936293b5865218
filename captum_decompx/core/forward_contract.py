"""What DecompX explains: the forward function's output, carried back to the model's own output.

DecompX decomposes the model's own output (its logits at the pooled position) into one share per
input token plus the biases' share. A Captum forward function often post-processes that output:
it selects or reorders classes, scales them, takes one position, sums or subtracts logits, applies
a softmax. This module works out, for one call, which combination of the model's logits the
forward function's output for the target is, so that the explanation is of exactly that value.

How it works:

1. :func:`tap_model_output` hooks the model (a forward hook on the top module, removed on exit)
   and replaces its output logits by a value-identical leaf tensor that requires grad, so that the
   rest of the forward function (its *tail*) is recorded by autograd. The model's own forward pass
   stays gradient-free.
2. :func:`target_index` reads Captum's target forms for an output of any rank.
3. :func:`explain_output` takes the vector-Jacobian product of the selected output with respect to
   the leaf: ``weights[b, c] = d y[b][target_b] / d logits[b, c]``. The tail is *linear without
   offset at this input* when the weights do not depend on the logits (a zero Hessian-vector
   product) and ``weights . logits == y[target]`` to float precision. Then the contributions of the
   classes, weighted by ``weights``, sum exactly to what the forward function returned.
4. Otherwise (softmax, sigmoid, log-softmax, an added offset), the explanation falls back to the
   logit of the class the output refers to (the one class whose logit raises the output, with a
   warning that says so), or refuses with an error that says how to write the forward function.

The examples of a batch are taken to be independent (Captum's convention for batched targets):
the weights come from one product of ``sum_b y[b][target_b]``.
"""

from __future__ import annotations

import numbers
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import validation
from .recording import hooks

TargetType = Union[None, int, tuple, Sequence[Any], Tensor]

#: Relative tolerance of the check ``weights . logits == y[target]`` (float32 tails).
LINEAR_RTOL = 1e-4
#: The same for tails computed in float16 or bfloat16.
LINEAR_RTOL_HALF = 2e-2


# --------------------------------------------------------------------------------------------
# The model's own output, as a leaf


#: The fields of a question-answering output, in the order of the classes of its model output.
SPAN_FIELDS = ("start_logits", "end_logits")


def _span_logits(output: Any) -> Optional[tuple[Tensor, Tensor]]:
    """A question-answering output's start and end logits, each (batch, seq), or None."""
    start, end = (getattr(output, name, None) for name in SPAN_FIELDS)
    if isinstance(start, Tensor) and isinstance(end, Tensor) and start.shape == end.shape and start.dim() == 2:
        return start, end
    return None


def _is_span_tuple(output: Any) -> bool:
    """A plain tuple starting with two float (batch, seq) tensors of one shape (start, end logits)."""
    if type(output) is not tuple or len(output) < 2:
        return False
    start, end = output[0], output[1]
    return (
        isinstance(start, Tensor)
        and isinstance(end, Tensor)
        and start.shape == end.shape
        and start.dim() == 2
        and start.dtype.is_floating_point
    )


def model_output_tensor(output: Any) -> Optional[Tensor]:
    """The tensor DecompX decomposes from what the model returned: ``.logits``, the first element
    of a tuple, the tensor itself, or a bare encoder's ``.last_hidden_state``; for a
    question-answering output, its start and end logits stacked as two classes per position,
    (batch, seq, 2) (what the QA head's linear map computes)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    span = _span_logits(output)
    if span is not None:
        return torch.stack(span, dim=-1)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if isinstance(hidden, Tensor) else None


def _with_model_output(output: Any, leaf: Tensor) -> Any:
    """``output`` with its model-output tensor replaced by ``leaf`` (same structure)."""
    if isinstance(output, Tensor):
        return leaf
    if isinstance(getattr(output, "logits", None), Tensor):
        output["logits"] = leaf  # a transformers ModelOutput keeps the key and the attribute in sync
        return output
    if _span_logits(output) is not None:
        # Both fields become views of the one leaf, so output.start_logits, output[0] and
        # output.to_tuple() all lead back to it.
        for index, name in enumerate(SPAN_FIELDS):
            output[name] = leaf[..., index]
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return type(output)((leaf, *output[1:])) if type(output) is tuple else output
    if isinstance(getattr(output, "last_hidden_state", None), Tensor):
        output["last_hidden_state"] = leaf
        _mark_undecomposed_fields(output)
        return output
    return output


class _UndecomposedOutput(torch.autograd.Function):
    """Identity that marks, in the forward function's autograd graph, a model output DecompX does
    not decompose (a bare encoder's ``pooler_output``), so that reading it is refused by name."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


#: Fields of a bare encoder's output computed from ``last_hidden_state`` by modules DecompX does not
#: decompose there (the pooler's dense + tanh is decomposed as part of a classifier's head).
UNDECOMPOSED_FIELDS = ("pooler_output",)


def _mark_undecomposed_fields(output: Any) -> None:
    """Replace each of ``output``'s :data:`UNDECOMPOSED_FIELDS` by a marked, value-identical tensor."""
    for name in UNDECOMPOSED_FIELDS:
        value = output.get(name) if hasattr(output, "get") else None
        if isinstance(value, Tensor) and value.dtype.is_floating_point:
            output[name] = _UndecomposedOutput.apply(value.detach().requires_grad_(True))


class _OtherTwoTowerField(_UndecomposedOutput):
    """The same mark, for the fields of a two-tower model's output (CLIP, SigLIP) that are not
    the decomposed logits: the other side's logits and the normalized embeddings."""


#: The fields of a two-tower model's output; the one the adapter names is decomposed.
TWO_TOWER_FIELDS = ("logits_per_image", "logits_per_text", "image_embeds", "text_embeds")


def _mark_other_two_tower_fields(output: Any, field: str) -> None:
    for name in TWO_TOWER_FIELDS:
        value = output.get(name) if hasattr(output, "get") else None
        if name != field and isinstance(value, Tensor) and value.dtype.is_floating_point:
            output[name] = _OtherTwoTowerField.apply(value.detach().requires_grad_(True))


def _reads_undecomposed_output(tensor: Tensor, marker: type = _UndecomposedOutput) -> bool:
    """``tensor``'s autograd graph passes through a field marked with ``marker``."""
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == f"{marker.__name__}Backward":
            return True
        todo.extend(next_node for next_node, _ in node.next_functions)
    return False


class ModelOutputTap:
    """Holds what :func:`tap_model_output` saw.

    Attributes:
        leaf: the value-identical leaf that replaced the model's output in the forward function,
            (batch, classes) or (batch, seq, classes); None when the model did not run or returned
            no tensor.
        real: with ``keep_graph=True``, the model's output itself, still in the graph of the
            forward pass (the fast path differentiates it); else None.
        calls: how many times the model ran in the tapping thread.
    """

    def __init__(self) -> None:
        self.leaf: Optional[Tensor] = None
        self.real: Optional[Tensor] = None
        self.calls = 0


@contextmanager
def tap_model_output(
    model: nn.Module, *, span_tuple: bool = False, keep_graph: bool = False, field: Optional[str] = None
) -> Iterator[ModelOutputTap]:
    """Replace the model's output by a leaf that requires grad, for one forward pass.

    With ``keep_graph`` the model's real output is kept in ``tap.real`` too (the fast path's frozen
    forward pass records the model's graph; the forward function's tail still sees the leaf).

    The hook runs after the model's own forward, which stays gradient-free; it then turns grad
    mode on so that the forward function's tail is recorded. The caller restores grad mode by
    running the forward function inside ``torch.no_grad()``; the hook is removed on exit, whatever
    happens. Only calls from the entering thread are tapped.

    Args:
        span_tuple: the model is a question-answering model: a plain tuple output (``return_dict=False``)
            starts with its start and end logits, which are tapped together as (batch, seq, 2).
        field: the output's field that is decomposed, when it is not ``logits`` (a two-tower
            model's ``logits_per_image`` or ``logits_per_text``); its other fields are marked so
            that a forward function reading them is refused by name.
    """
    tap = ModelOutputTap()

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        tap.calls += 1
        if tap.calls > 1:  # the capture refuses a second pass with its own message
            return None
        if span_tuple and _is_span_tuple(output):
            spans = torch.stack(output[:2], dim=-1)
            tap.leaf = spans.detach().clone().requires_grad_(True)
            if keep_graph:
                tap.real = spans
            torch.set_grad_enabled(True)
            return type(output)((tap.leaf[..., 0], tap.leaf[..., 1], *output[2:])) if type(output) is tuple else output
        if field is not None:
            return _tap_field(output, field)
        tensor = model_output_tensor(output)
        if tensor is None or not tensor.dtype.is_floating_point:
            return None
        tap.leaf = tensor.detach().clone().requires_grad_(True)
        if keep_graph:
            tap.real = tensor
        torch.set_grad_enabled(True)
        return _with_model_output(output, tap.leaf)

    def _tap_field(output: Any, name: str) -> Any:
        tensor = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if not isinstance(tensor, Tensor) or not tensor.dtype.is_floating_point:
            return None
        tap.leaf = tensor.detach().clone().requires_grad_(True)
        if keep_graph:
            tap.real = tensor
        torch.set_grad_enabled(True)
        output[name] = tap.leaf
        _mark_other_two_tower_fields(output, name)
        return output

    with hooks() as recorder:
        recorder.forward_hook(model, "output tap", hook)
        yield tap


def decomposed_model_output(raw: Tensor, pooling: Tensor, *, each: bool, adapter_name: str) -> tuple[Tensor, Optional[int]]:
    """The part of the model's output the decomposition covers, graph kept (both paths use it).

    Args:
        raw: the model's output, (batch, classes), (batch, seq, classes), or (batch, choices) for a
            multiple-choice model given ids (batch, choices, seq).
        pooling: (rows, seq) weights of the pooled position; rows = batch (x choices).
        each: the adapter's head is applied at every position (``pooling="each"``).

    Returns:
        (batch, seq, classes) with ``each``; else (rows, classes) at the pooled position, or
        (batch * choices, 1) for multiple choice; and the number of choices (None otherwise).
    """
    flattened = pooling.shape[0]
    if each:
        if raw.dim() != 3 or raw.shape[:2] != pooling.shape:
            raise ValueError(
                f"The adapter {adapter_name!r} decomposes an output at every position, (batch, seq, "
                f"classes), but the model returned a tensor of shape {tuple(raw.shape)}."
            )
        return check_finite(raw), None
    if raw.dim() == 2 and raw.shape[0] != flattened and raw.shape[0] * raw.shape[1] == flattened:
        # A multiple-choice model: one logit per flattened (example, choice) sequence.
        return check_finite(raw).reshape(flattened, 1), int(raw.shape[1])
    if raw.dim() == 3 and raw.shape[:2] == pooling.shape:
        rows = torch.arange(flattened, device=raw.device)
        check_finite(raw[rows, pooling.abs().argmax(dim=1).to(raw.device)])
        return torch.einsum("bnc,bn->bc", raw, pooling.to(raw.dtype)), None
    return check_finite(raw), None


def check_finite(output: Tensor) -> Tensor:
    """``output`` (batch, ...), the model's output that DecompX decomposes, when it is finite.

    Raises:
        ValueError: it holds NaN or an infinity: naming the examples, and the usual cause.
    """
    if not output.dtype.is_floating_point or bool(torch.isfinite(output).all()):
        return output
    bad = ~torch.isfinite(output.detach())
    examples = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten().tolist() if bad.dim() else [0]
    shown = ", ".join(map(str, examples[:10])) + (" ..." if len(examples) > 10 else "")
    raise ValueError(
        f"The model's output is not finite (NaN or infinity) for example(s) {shown}: there is no value "
        "to decompose. A float64 model running eager attention returns NaN where a query has every key "
        "masked (left padding, or a sliding window with right padding), because its softmax runs in "
        "float32, where the mask's float64 minimum becomes -inf. Load such a model with "
        "attn_implementation='sdpa' where it supports it (its kernel gives that query no attention), "
        "or run it in float32."
    )


def pooled_model_output(tensor: Tensor, pooling: Tensor) -> Tensor:
    """The model's output at the pooled position: (batch, classes).

    Args:
        tensor: (batch, classes), returned as it is, or (batch, seq, classes) per position.
        pooling: (batch, seq) pooling weights over the last layer's rows.
    """
    if tensor.dim() == 3:
        return torch.einsum("bnc,bn->bc", tensor.detach(), pooling.to(tensor.dtype))
    return tensor.detach()


def forward_output_tensor(output: Any, batch: int) -> Tensor:
    """The forward function's output as a tensor with one row per example (a question-answering
    output object: its start and end logits stacked, (batch, seq, 2)).

    Raises:
        TypeError: not a tensor nor an object with ``.logits``.
        ValueError: not one row per example.
    """
    tensor = output
    span = None if isinstance(output, Tensor) else _span_logits(output)
    if span is not None:  # a question-answering output: (batch, seq, 2), start and end per position
        tensor = torch.stack(span, dim=-1)
    elif not isinstance(tensor, Tensor):
        tensor = getattr(output, "logits", None)
        if tensor is None and isinstance(output, (tuple, list)) and output:
            tensor = output[0]
    if not isinstance(tensor, Tensor):
        raise TypeError(
            f"The forward function returned {type(output).__name__}; DecompX needs a tensor with one "
            "row per example (e.g. the logits, (batch, classes)) or an output object with `.logits`."
        )
    if tensor.dim() == 0 or tensor.shape[0] != batch:
        rows = "a scalar" if tensor.dim() == 0 else f"{tensor.shape[0]} rows of logits"
        raise ValueError(
            f"The forward function returned {rows} for {batch} inputs; DecompX needs one row per "
            "example, e.g. logits (batch, classes) or one value per example (batch,)."
        )
    return tensor


# --------------------------------------------------------------------------------------------
# Targets


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def target_index(target: TargetType, shape: Sequence[int], device: torch.device, labels: str = "") -> Tensor:
    """The index into each example's output that ``target`` selects, as Captum reads it.

    Args:
        target: for a (batch,) output: None. For (batch, classes): None (one class only), an int,
            a 1-tuple ``(class,)``, one class per example (list, tuple, 1-D tensor or array), or a
            list of 1-tuples. For (batch, positions, classes) and higher: a tuple of indices, one
            per dimension after the batch, the same for every example; a list of such tuples (one
            per example); or a tensor (dims,) or (batch, dims).
        shape: the shape of the forward function's output.
        labels: a readable list of the classes, for messages (2-D outputs).

    Returns:
        (batch, len(shape) - 1) long tensor.

    Raises:
        ValueError: a form that does not select one value per example, or an index out of range.
    """
    batch, inner = int(shape[0]), tuple(int(s) for s in shape[1:])
    dims = len(inner)
    if dims == 0:
        if target is None or target == () or (isinstance(target, list) and all(t == () for t in target)):
            return torch.zeros(batch, 0, dtype=torch.long, device=device)
        raise ValueError(
            f"The forward function returns one value per example (shape ({batch},)); there is no class "
            f"to choose: pass target=None (got target={target!r})."
        )
    if dims == 1:
        if isinstance(target, tuple) and len(target) == 1 and (_is_int(target[0]) or isinstance(target[0], Tensor)):
            target = int(target[0])  # Captum's index tuple (class,); for a batch of one also one class per example
        elif isinstance(target, list) and target and all(isinstance(t, tuple) for t in target):
            if not all(len(t) == 1 for t in target):
                raise ValueError(
                    f"target tuples index each example's output of shape {inner}: give one index per "
                    f"dimension after the batch, (class,); got {target!r}."
                )
            target = [t[0] for t in target]
        return validation.check_targets(target, batch, inner[0], device, labels).view(batch, 1)
    return _index_of_higher_rank(target, batch, inner, device)


def _index_of_higher_rank(target: TargetType, batch: int, inner: tuple[int, ...], device: torch.device) -> Tensor:
    dims = len(inner)
    shape = "(" + ", ".join(["batch", *map(str, inner)]) + ")"
    advice = (
        f"The forward function returns shape {shape}: target must pick one value per example, as a "
        f"tuple of {dims} indices (e.g. target=(position, class)), a list of such tuples (one per "
        f"example) or a long tensor of shape ({dims},) or (batch, {dims})."
    )
    if target is None or _is_int(target) or isinstance(target, bool):
        raise ValueError(f"{advice} Got target={target!r}.")
    if isinstance(target, tuple):
        rows = [target] * batch
    elif isinstance(target, list):
        if len(target) != batch or not all(isinstance(t, tuple) for t in target):
            raise ValueError(f"{advice} Got a list {target!r} for a batch of {batch}.")
        rows = list(target)
    elif isinstance(target, Tensor):
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(f"{advice} Got a {target.dtype} tensor.")
        if target.shape == (dims,):
            rows = [tuple(target.tolist())] * batch
        elif target.shape == (batch, dims):
            rows = [tuple(row) for row in target.tolist()]
        else:
            raise ValueError(f"{advice} Got a tensor of shape {tuple(target.shape)}.")
    else:
        raise ValueError(f"{advice} Got {type(target).__name__}.")
    for row in rows:
        if len(row) != dims or not all(_is_int(i) or (isinstance(i, Tensor) and i.dim() == 0) for i in row):
            raise ValueError(f"{advice} Got {row!r}.")
    index = torch.tensor([[int(i) for i in row] for row in rows], dtype=torch.long, device=device).view(batch, dims)
    sizes = torch.tensor(inner, device=device)
    outside = (index < -sizes) | (index >= sizes)
    if bool(outside.any()):
        example, dim = outside.nonzero()[0].tolist()
        raise ValueError(
            f"target index {int(index[example, dim])} (example {example}, dimension {dim + 1}) is out of "
            f"range for the forward function's output of shape {shape}."
        )
    return torch.where(index < 0, index + sizes, index)


def select(output: Tensor, index: Tensor) -> Tensor:
    """``output[b][index[b]]`` for every example: (batch,)."""
    rows = torch.arange(output.shape[0], device=output.device)
    return output[(rows, *index.to(output.device).unbind(1))]


# --------------------------------------------------------------------------------------------
# The tail: linear at this input, or the class the output refers to


@dataclass
class ExplainedOutput:
    """Which combination of the model's logits the explanation is of.

    Attributes:
        weights: (batch, classes): the explained value is ``sum_c weights[b, c] * logits[b, c]``
            of the model's logits at the pooled position.
        value: (batch,), the explained value: the forward function's output for the target when
            the tail is linear, else the logit of ``referred_class``.
        referred_class: (batch,) the class whose logit is explained in place of a non-linear
            output; None when the tail is linear.
    """

    weights: Tensor
    value: Tensor
    referred_class: Optional[Tensor]


def _unused(name: str) -> RuntimeError:
    return RuntimeError(
        f"The forward function's output for the target {name} the model's output through "
        "differentiable operations, so DecompX cannot tell which logits it is made of. Return a "
        "tensor computed from the model's output without .detach(), .item(), numpy or "
        "torch.no_grad(), e.g. lambda ids, mask: model(ids, attention_mask=mask).logits."
    )


def _pooled_position(jacobian: Tensor, pooling: Tensor) -> Tensor:
    """The product at the one position the decomposition covers; refuse weight elsewhere."""
    batch, seq, _ = jacobian.shape
    positions = pooling.abs().argmax(dim=1)
    one_hot = torch.zeros(batch, seq, dtype=torch.bool, device=jacobian.device)
    one_hot[torch.arange(batch), positions] = True
    single = bool((pooling != 0).sum(dim=1).le(1).all())
    elsewhere = jacobian.detach().abs().masked_fill(one_hot.unsqueeze(-1), 0).amax(dim=-1)
    if not single or bool((elsewhere > 0).any()):
        example, position = (elsewhere > 0).nonzero()[0].tolist() if bool((elsewhere > 0).any()) else (0, -1)
        raise NotImplementedError(
            "The forward function's output depends on the model's output at position "
            f"{position} of example {example}, but DecompX decomposes the model's output at one "
            f"position only (here position {int(positions[example])}: the pooled token). Per-position "
            "outputs (token classification, question answering spans, a language model's earlier "
            "positions) are not supported yet: select the pooled position in the forward function, "
            "e.g. model(ids).logits[:, -1, :] for a language model."
        )
    return jacobian[torch.arange(batch), positions]


def explain_output(selected: Tensor, leaf: Tensor, pooling: Tensor, *, per_position: bool = False) -> ExplainedOutput:
    """Which combination of the model's logits ``selected`` is, or the class it refers to.

    Args:
        selected: (batch,), the forward function's output for the target, computed from ``leaf``.
        leaf: the model's output as the forward function received it, (batch, classes) or
            (batch, seq, classes).
        pooling: (batch, seq), the pooled position's weights (only read for 3-D ``leaf``).
        per_position: the decomposition covers every position (a per-position head): a 3-D
            ``leaf`` then gives weights (batch, seq, classes) over every position's logits.

    Returns:
        The weights of the logits at the pooled position (at every position when
        ``per_position``), and the explained value.

    Raises:
        RuntimeError: ``selected`` does not depend on the model's output through autograd.
        NotImplementedError: it depends on the model's output at another position than the pooled
            one, or on a bare encoder's ``pooler_output``.
        ValueError: the tail is not linear at this input and no single class is referred to.
    """
    if not selected.requires_grad:
        raise _unused("does not depend on")
    if _reads_undecomposed_output(selected, _OtherTwoTowerField):
        raise NotImplementedError(
            "The forward function reads a field of the image-text model's output that DecompX does not "
            "decompose on this call: it decomposes logits_per_image when the inputs are pixel values (the "
            "texts held fixed) and logits_per_text when they are token ids (the images held fixed), not the "
            "normalized image_embeds or text_embeds. Return that side's logits, e.g. lambda pixels, ids, mask: "
            "model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits_per_image, and choose the "
            "text with target=."
        )
    if _reads_undecomposed_output(selected):
        raise NotImplementedError(
            "The forward function reads the model's pooler_output (the pooler's dense + tanh on the first token), "
            "which DecompX does not decompose for a bare encoder: it decomposes last_hidden_state. Explain the first "
            "token's hidden state instead (model(...).last_hidden_state[:, 0] @ w), or load the model as a sequence "
            "classifier (e.g. BertForSequenceClassification), whose pooler and head DecompX decomposes."
        )
    if leaf.dim() not in (2, 3):
        raise NotImplementedError(
            f"DecompX decomposes a model output of shape (batch, classes) or (batch, seq, classes); "
            f"the model returned {tuple(leaf.shape)}."
        )
    with torch.enable_grad():
        (jacobian,) = torch.autograd.grad(selected.sum(), leaf, create_graph=True, allow_unused=True)
        if jacobian is None:
            raise _unused("does not depend on")
        curvature = 0.0
        if jacobian.requires_grad:
            generator = torch.Generator(device="cpu").manual_seed(0)
            direction = torch.randn(leaf.shape, generator=generator, dtype=torch.float32).to(leaf)
            (product,) = torch.autograd.grad((jacobian * direction).sum(), leaf, allow_unused=True)
            if product is not None:
                curvature = float(product.detach().abs().max())
    jacobian = jacobian.detach()
    logits = leaf.detach()
    per_position_shape = None
    if leaf.dim() == 3 and per_position:
        # Every position's logits are decomposed: check and weigh them as one flat vector.
        per_position_shape = leaf.shape
        jacobian, logits = jacobian.flatten(1), logits.flatten(1)
    elif leaf.dim() == 3:
        jacobian = _pooled_position(jacobian, pooling)
        logits = logits[torch.arange(logits.shape[0]), pooling.abs().argmax(dim=1)]
    classes = int(per_position_shape[-1]) if per_position_shape is not None else 0
    explained = _linear_or_referred(selected, jacobian, logits, curvature, classes)
    if per_position_shape is not None:
        explained.weights = explained.weights.view(per_position_shape)
    return explained


def _linear_or_referred(
    selected: Tensor, jacobian: Tensor, logits: Tensor, curvature: float, classes: int = 0
) -> ExplainedOutput:
    """The check and the fallback of :func:`explain_output` on (batch, outputs) weights."""
    weights = jacobian.to(torch.promote_types(jacobian.dtype, torch.float32))  # float64 models keep float64
    value = selected.detach()
    # A non-finite value is neither linear nor offset: refuse it rather than warn about an offset.
    check_finite(logits)
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            "The forward function's output for the target is not finite (NaN or infinity) although the "
            "model's output is: there is no value to explain. Check what the forward function does "
            "with the model's output (a log of zero, a division by zero)."
        )
    terms = weights * logits.float()
    rtol = LINEAR_RTOL if selected.dtype in (torch.float32, torch.float64) else LINEAR_RTOL_HALF
    scale = value.float().abs() + terms.abs().sum(-1)
    offset_free = bool(((terms.sum(-1) - value.float()).abs() <= rtol * scale + 1e-6).all())
    flat = curvature <= 1e-6 * (float(weights.abs().max()) + 1e-12)
    if offset_free and flat:
        return ExplainedOutput(weights, value, None)
    if not flat and not offset_free and bool((terms.sum(-1).abs() <= 1e-5 * (terms.abs().sum(-1) + 1e-12)).all()):
        # Scale invariant (the product with the output is zero): a normalized output, e.g. cosine.
        raise ValueError(
            "The forward function's output for the target does not change when the model's output is "
            "scaled (e.g. cosine similarity, or a normalized embedding): it is not linear in the model's "
            "output, and DecompX does not choose silently how to linearize it. To explain a cosine "
            "similarity with the norms frozen at their values in this forward pass (as DecompX freezes "
            "LayerNorm's scale), compute it with captum_decompx.cosine_similarity_frozen_norm(embedding, "
            "other); or explain the dot product with a fixed vector."
        )
    raising = weights > 0
    if bool((raising.sum(-1) == 1).all()):
        referred = raising.float().argmax(-1)
        rows = torch.arange(weights.shape[0], device=weights.device)
        logit = logits[rows, referred]
        one_hot = torch.zeros_like(weights)
        one_hot[rows, referred] = 1.0
        _warn_referred(referred, flat, classes)
        return ExplainedOutput(one_hot, logit, referred)
    kind = "is not linear in the model's logits" if not flat else "adds an offset to the model's logits"
    raise ValueError(
        f"The forward function's output for the target {kind} at this input (e.g. a softmax, "
        "sigmoid or log-softmax over a combination of classes), and no single class's logit raises "
        "it, so DecompX cannot say which logit it refers to. DecompX explains the model's logits and "
        "linear functions of them (a class, a slice or reordering of classes, a position, sums, "
        "differences, scaling, masked mean pooling, dot products with fixed vectors). Return those "
        "from the forward function, e.g. lambda ids, mask: model(ids, attention_mask=mask).logits, "
        "and choose the class with target=."
    )


def _warn_referred(referred: Tensor, flat: bool, per_position_classes: int = 0) -> None:
    """``per_position_classes``: the classes per position when ``referred`` indexes flattened
    (position, class) pairs."""
    classes = sorted(set(referred.tolist()))
    if per_position_classes:
        shown = ", ".join(f"(position {c // per_position_classes}, class {c % per_position_classes})" for c in classes[:10])
    else:
        shown = ", ".join(map(str, classes[:10]))
    shown += " ..." if len(classes) > 10 else ""
    kind = (
        "probabilities or log-probabilities (softmax, sigmoid, log_softmax), not logits"
        if not flat
        else "the logits plus an offset, not logits"
    )
    warnings.warn(
        f"The forward function returns {kind}: its output is not a linear function of the model's "
        f"logits at this input. DecompX explains instead the logit of the class the output refers "
        f"to (class {shown}, the one class whose logit raises the output); the attributions and the "
        "bias share sum to that logit, and the convergence delta is measured against it. Return the "
        "logits (e.g. model(...).logits, without softmax) and choose the class with target= to "
        "explain exactly what the forward function returns.",
        UserWarning,
        stacklevel=4,
    )


def cosine_similarity_frozen_norm(embedding: Tensor, other: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """Cosine similarity with both norms frozen at their values: DecompX explains it exactly.

    Cosine similarity is not linear in the embedding (it does not change when the embedding is
    scaled), so DecompX refuses it. This function has the same value, ``<a, b> / (|a| |b|)``, but
    takes the norms as constants (detached), as DecompX freezes LayerNorm's scale at its value in
    the forward pass: the explained quantity is then the dot product of the embedding with the
    fixed vector ``b / (|a| |b|)``, and the attributions sum to the cosine similarity. Use it in
    the forward function in place of ``torch.nn.functional.cosine_similarity``; ``other`` must be
    fixed (not computed from the same forward pass), else the output is quadratic in the model's
    output and DecompX refuses it.

    Args:
        embedding: (batch, dim) embeddings computed from the model's output.
        other: (dim,) or (batch, dim), a fixed vector to compare with.

    Returns:
        (batch,) cosine similarities.
    """
    norms = (embedding.norm(dim=dim) * other.norm(dim=dim)).detach().clamp(min=eps)
    return (embedding * other).sum(dim=dim) / norms


__all__ = [
    "ExplainedOutput",
    "check_finite",
    "cosine_similarity_frozen_norm",
    "ModelOutputTap",
    "explain_output",
    "forward_output_tensor",
    "model_output_tensor",
    "decomposed_model_output",
    "pooled_model_output",
    "select",
    "tap_model_output",
    "target_index",
]
