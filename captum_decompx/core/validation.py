"""Input checks that run before any work, each with a message that says what was wrong and what to do.

Every function here either returns a normalized value, returns nothing, or raises
``ValueError``/``TypeError``. What the forward function does with the logits (a softmax, say) is
read by :mod:`captum_decompx.core.forward_contract`, not guessed from the returned values. None of
them changes the model.

Decisions recorded here:

- 1-D token ids are refused, not reshaped: the other tensors passed to the forward function (an
  attention mask, token type ids) would stay 1-D and the model would broadcast them into a wrong
  mask or fail deep inside. The message says to call ``input_ids.unsqueeze(0)`` (and the same on the
  mask).
- ``inputs_embeds`` are supported when the forward function takes them: a float tensor
  ``(batch, seq, embedding_dim)`` whose last size is the model's embedding width is passed to the
  forward function unchanged, and the attributions are ``(batch, seq)`` as for token ids (DecompX
  starts from the input of the first layer, which the hooks capture whatever produced it). When the
  forward function is the Hugging Face model itself, DecompX would pass the embeddings as
  ``input_ids``; the error then shows the one-line wrapper that passes ``inputs_embeds=``.
- Gradient (activation) checkpointing is refused: call ``model.gradient_checkpointing_disable()``.
- Pruned heads are supported (the engine reads the number of heads of every layer from its captured
  attention probabilities); the tests check completeness and fast == exact on a pruned model.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .recording import hooks

TargetType = Union[None, int, Sequence[int], Tensor]


# --------------------------------------------------------------------------------------------
# Inputs


def unpack_inputs(inputs: Any) -> tuple[Tensor, bool]:
    """The one input tensor, and whether it came as a 1-tuple (Captum's tuple convention).

    Raises:
        ValueError: a tuple of more or fewer than one tensor.
        TypeError: not a tensor.
    """
    as_tuple = isinstance(inputs, tuple)
    if as_tuple:
        if len(inputs) != 1:
            raise ValueError(
                f"DecompX attributes to one input, the token ids; got a tuple of {len(inputs)} "
                "tensors. Pass the other tensors (attention mask, token type ids) in "
                "additional_forward_args."
            )
        (inputs,) = inputs
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"inputs must be a tensor of token ids (batch, seq), got {type(inputs).__name__}. "
            "Convert with torch.as_tensor(ids, dtype=torch.long)."
        )
    return inputs, as_tuple


def token_embedding(model: nn.Module) -> Optional[nn.Embedding]:
    """The model's token embedding table, when it has one (``get_input_embeddings()``)."""
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        embedding = getter()
    except (NotImplementedError, AttributeError):
        return None
    return embedding if isinstance(embedding, nn.Embedding) else None


def is_the_model_itself(forward_func: Any, model: nn.Module) -> bool:
    """The forward function is the model, or its bound ``forward``/``__call__``."""
    if forward_func is model:
        return True
    return getattr(forward_func, "__self__", None) is model and getattr(forward_func, "__name__", "") in ("forward", "__call__")


def check_token_inputs(inputs: Tensor, model: nn.Module, forward_func: Any = None) -> None:
    """Check a token input: integer ids (batch, seq), or embeddings (batch, seq, embedding_dim).

    Args:
        inputs: what the user passed as ``inputs``.
        model: the hooked model (its embedding table gives the vocabulary size).
        forward_func: the forward function; embeddings are accepted only when it is not the model
            itself (the model would receive them as ``input_ids``).

    Raises:
        TypeError: a float tensor that is not embeddings, a bool or complex tensor.
        ValueError: a wrong shape, an empty batch or sequence, ids outside the vocabulary.
    """
    shape = tuple(inputs.shape)
    embedding = token_embedding(model)
    if inputs.dtype.is_floating_point:
        width = embedding.embedding_dim if embedding is not None else None
        if inputs.dim() == 3 and (width is None or shape[-1] == width):
            if forward_func is not None and is_the_model_itself(forward_func, model):
                raise TypeError(
                    f"inputs is a float tensor of shape {shape}: input embeddings. DecompX(model) "
                    "calls model(inputs, ...), which takes token ids. Pass the token ids (batch, seq) "
                    "as torch.long, or a forward function that takes embeddings, e.g. "
                    "DecompX(lambda embeds, mask: model(inputs_embeds=embeds, attention_mask=mask), "
                    "model=model)."
                )
            _check_not_empty(shape[:2], "embeddings")
            return
        raise TypeError(
            f"inputs must be integer token ids (batch, seq); got a {inputs.dtype} tensor of shape "
            f"{shape}. If these are ids stored as floats, pass inputs.long(); if they are input "
            f"embeddings, their shape must be (batch, seq, {width if width is not None else 'hidden'})."
        )
    if inputs.dtype == torch.bool or inputs.dtype.is_complex:
        raise TypeError(f"inputs must be integer token ids (torch.long); got a {inputs.dtype} tensor.")
    if inputs.dim() == 1:
        raise ValueError(
            f"inputs must be token ids of shape (batch, seq); got a 1-D tensor of shape {shape}. "
            "For one sequence pass input_ids.unsqueeze(0), and unsqueeze its attention mask the same "
            "way; the attributions are then (1, seq)."
        )
    if inputs.dim() != 2:
        raise ValueError(
            f"inputs must be token ids of shape (batch, seq); got shape {shape}. For one sequence use input_ids.unsqueeze(0)."
        )
    _check_not_empty(shape, "token ids")
    if embedding is not None:
        check_vocabulary(inputs, embedding.num_embeddings)


def _check_not_empty(shape: Sequence[int], what: str) -> None:
    if shape[0] == 0:
        raise ValueError(f"inputs is an empty batch ({what} of shape {tuple(shape)}): pass at least one example.")
    if shape[1] == 0:
        raise ValueError(
            f"inputs holds empty sequences ({what} of shape {tuple(shape)}): every example needs at "
            "least one token (a tokenizer gives at least its special tokens, e.g. [CLS] [SEP])."
        )


def check_vocabulary(input_ids: Tensor, vocabulary_size: int) -> None:
    """Every id must be in ``[0, vocabulary_size)``.

    Raises:
        ValueError: naming the first offending ids and where they are.
    """
    outside = (input_ids < 0) | (input_ids >= vocabulary_size)
    if not bool(outside.any()):
        return
    where = outside.nonzero()[:5].tolist()
    found = ", ".join(f"{int(input_ids[row, col])} at [{row}, {col}]" for row, col in where)
    count = int(outside.sum())
    raise ValueError(
        f"inputs holds {count} id(s) outside the model's vocabulary of {vocabulary_size} "
        f"(valid ids: 0 to {vocabulary_size - 1}): {found}{' ...' if count > 5 else ''}. "
        "Were the ids made by this model's tokenizer?"
    )


def check_pixel_inputs(
    inputs: Tensor,
    model_name: str,
    model: Optional[nn.Module] = None,
    *,
    fixed_size: bool = False,
    forward_is_model: bool = False,
) -> None:
    """Image models take float ``pixel_values`` (batch, channels, height, width), not empty, with
    the model's number of channels; a model that reads one image size only (``fixed_size``: ViT,
    DeiT, whose position embeddings are interpolated only when the call asks for it) is called by
    the forward function with that size when the forward function is the model itself.

    Raises:
        ValueError: naming what was wrong and what to pass instead.
    """
    if inputs.dim() != 4 or not inputs.dtype.is_floating_point:
        raise ValueError(
            f"{model_name} models take pixel_values of shape (batch, channels, height, width) as "
            f"floats; got {tuple(inputs.shape)} {inputs.dtype}."
        )
    if inputs.shape[0] == 0:
        raise ValueError("inputs is an empty batch: pass at least one image.")
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", None) or config  # an image-text model's image tower
    channels = getattr(config, "num_channels", None)
    if isinstance(channels, int) and inputs.shape[1] != channels:
        raise ValueError(
            f"The {model_name} model takes images with {channels} channel(s) (config.num_channels); got "
            f"{inputs.shape[1]} (pixel_values of shape {tuple(inputs.shape)}, channels second). Convert the "
            "images with the model's image processor (e.g. a grayscale image to RGB), or check the axis order "
            "(channels-last images need .permute(0, 3, 1, 2))."
        )
    size = getattr(config, "image_size", None)
    expected = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else None
    if fixed_size and forward_is_model and expected is not None and tuple(inputs.shape[2:]) != expected:
        raise ValueError(
            f"The {model_name} model reads {expected[0]}x{expected[1]} images (config.image_size) unless it is called "
            f"with interpolate_pos_encoding=True; got {inputs.shape[2]}x{inputs.shape[3]}. Resize the images (the "
            "model's image processor does), or explain a forward function that interpolates its position "
            "embeddings: DecompX(lambda pixels: model(pixels, interpolate_pos_encoding=True).logits, model=model)."
        )


#: Model arguments that hold a generation cache: a tensor passed there by position (an attention
#: mask, most often) is read as a cache and fails deep inside the model.
_CACHE_ARGUMENTS = ("past", "cache")


def check_positional_arguments(forward_func: Any, model: nn.Module, extra_args: tuple) -> None:
    """When the forward function is the model, ``additional_forward_args`` go to its ``forward`` by
    position; none may land in a cache argument (GPT-2's second argument is ``past_key_values``).

    Raises:
        ValueError: naming the argument the tensor landed in and the forward function to pass instead.
    """
    if not extra_args or not is_the_model_itself(forward_func, model):
        return
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    positional = [p for p in parameters[1:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for index, (argument, parameter) in enumerate(zip(extra_args, positional)):
        if isinstance(argument, Tensor) and any(word in parameter.name.lower() for word in _CACHE_ARGUMENTS):
            model_name = type(model).__name__
            raise ValueError(
                f"additional_forward_args[{index}] lands in {model_name}.forward's argument {parameter.name!r}: "
                f"DecompX(model) calls model(inputs, *additional_forward_args), and {model_name} does not take the "
                "attention mask second. Pass it by name through a forward function: DecompX(lambda ids, mask: "
                "model(input_ids=ids, attention_mask=mask).logits, model=model).attribute(ids, target=..., "
                "additional_forward_args=(mask,))."
            )


def check_attention_mask(forward_func: Any, model: nn.Module, inputs: Tensor, extra_args: tuple) -> None:
    """When the forward function is the model and its second argument is ``attention_mask``,
    every example must have at least one real token.

    A row of zeros in the attention mask is an empty sequence: its softmax is uniform over the
    padding, and there is nothing to explain.
    """
    if not extra_args or not is_the_model_itself(forward_func, model):
        return
    mask = extra_args[0]
    if not isinstance(mask, Tensor) or mask.shape != inputs.shape[:2] or mask.dtype.is_floating_point:
        return
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return
    if len(names) < 2 or names[1] != "attention_mask":
        return
    empty = (mask == 0).all(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"Example(s) {rows} have an attention mask of zeros only: empty sequences. Every example "
            "needs at least one real token; drop these examples from the batch."
        )


@contextmanager
def recording_model_ids(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record the token ids the model's embedding table receives first, in the entering thread.

    Yields:
        A list that holds, after the forward pass, the ids (batch, seq) the model embedded; empty
        when the model has no token embedding table or was given embeddings. The hook is removed on
        exit, whatever happens.
    """
    seen: list[Tensor] = []
    embedding = token_embedding(model)
    if embedding is None:
        yield seen
        return

    def record(_module: nn.Module, args: tuple, _kwargs: dict) -> None:
        if not seen and args and isinstance(args[0], Tensor):
            seen.append(args[0].detach())

    with hooks() as recorder:
        recorder.pre_hook(embedding, "model ids", record)
        yield seen


def check_model_received_the_inputs(inputs: Tensor, seen: list[Tensor]) -> None:
    """The attributions are one score per token the model embedded: the model must receive the
    inputs' tokens in the inputs' shape and order (see :func:`recording_model_ids`).

    A forward function that adds tokens (wraps the ids in [CLS] ... [SEP]), drops them or reorders
    them would give scores of the model's tokens, not of the inputs'. Ids changed in place (a
    remapped vocabulary, a masked token) keep their positions and are accepted.

    Raises:
        ValueError: the model received another number of tokens, or the inputs' tokens reordered.
    """
    if not seen or inputs.dtype.is_floating_point:
        return
    received = seen[0]
    expected = inputs.reshape(-1, inputs.shape[-1]) if received.dim() == 2 and inputs.dim() == 3 else inputs
    if received.shape != expected.shape:
        raise ValueError(
            f"The forward function gives the model token ids of shape {tuple(received.shape)} for inputs of shape "
            f"{tuple(inputs.shape)}: it adds or drops tokens, and the attributions would be of the model's tokens, "
            "not of the inputs'. Pass the ids exactly as the model receives them (special tokens included, e.g. "
            "from the tokenizer with add_special_tokens=True) and let the forward function pass them on unchanged."
        )
    expected = expected.to(received.device)
    if torch.equal(received, expected.to(received.dtype)):
        return
    reordered = torch.equal(received.sort(dim=-1).values, expected.to(received.dtype).sort(dim=-1).values)
    if reordered:
        raise ValueError(
            "The forward function gives the model the inputs' tokens in another order (e.g. reversed): the "
            "attributions would follow the model's order, not the inputs'. Pass the ids in the order the model "
            "receives them and let the forward function pass them on unchanged."
        )


# --------------------------------------------------------------------------------------------
# The model


def check_model(model: nn.Module) -> None:
    """The model must run as it will be explained: eval mode, no activation checkpointing.

    Raises:
        ValueError: training mode, or gradient checkpointing enabled.
    """
    if model.training:
        raise ValueError(
            "The model is in training mode: dropout would make the decomposition describe another "
            "forward pass than the one explained. Call model.eval() first."
        )
    checkpointed = [name for name, module in model.named_modules() if getattr(module, "gradient_checkpointing", False) is True]
    if checkpointed:
        prefix = "activation" if hasattr(model, "activation_checkpointing_disable") else "gradient"
        raise ValueError(
            "The model has gradient (activation) checkpointing enabled "
            f"(e.g. on {checkpointed[0] or type(model).__name__!r}), which DecompX does not support: "
            "a checkpointed layer may run its forward again, and the hooks must see each layer run "
            f"exactly once. Call model.{prefix}_checkpointing_disable() before explaining, and "
            f"model.{prefix}_checkpointing_enable() afterwards if you train again."
        )


#: Parameter names that PEFT adds after the model was loaded (adapters, trainable head copies):
#: they are not weights the checkpoint was meant to hold.
_ADDED_AFTER_LOADING = ("lora_", "modules_to_save", "original_module", "prompt_encoder", "ia3_", "vera_", "oft_", "boft_")


def newly_initialized_parameters(model: nn.Module) -> list[str]:
    """The parameters that ``from_pretrained`` did not find in the checkpoint and initialized at random.

    transformers 5 marks every parameter it loads with ``_is_hf_initialized``; a model that has some
    marked and others not was loaded from a checkpoint that lacked those (a head, a pooler). A model
    built from a configuration has none marked, and transformers 4 marks none: nothing can be said
    then, and the list is empty. Parameters added by PEFT are not counted.
    """
    loaded, unmarked = False, []
    for name, parameter in model.named_parameters():
        if getattr(parameter, "_is_hf_initialized", False):
            loaded = True
        elif not any(marker in name for marker in _ADDED_AFTER_LOADING):
            unmarked.append(name)
    return unmarked if loaded else []


def warn_if_newly_initialized(model: nn.Module, name: str) -> None:
    """Warn when the model has weights that were initialized at random when it was loaded (see
    :func:`newly_initialized_parameters`)."""
    fresh = newly_initialized_parameters(model)
    if not fresh:
        return
    shown = ", ".join(fresh[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
    warnings.warn(
        f"{name}: the model's {shown} were not in the checkpoint it was loaded from: transformers initialized them at "
        "random. Unless they were trained since, the attributions explain a random head. Load a checkpoint that "
        "holds them (a model fine-tuned for this task).",
        UserWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------------------------------
# Targets


def class_labels(model: nn.Module, classes: int) -> str:
    """``"0 (negative), 1 (positive)"`` from ``config.id2label``, ``"0, 1"``, or for more than 20
    classes ``"0 to 49999"``."""
    if classes > 20:
        return f"0 to {classes - 1}"
    names = getattr(getattr(model, "config", None), "id2label", None) or {}
    return ", ".join(f"{i} ({names.get(i, names.get(str(i), i))})" if names else str(i) for i in range(classes))


def check_targets(target: TargetType, batch: int, classes: int, device: torch.device, labels: str = "") -> Tensor:
    """The class to explain for every example, as a (batch,) long tensor.

    Args:
        target: None (only for one output), an int for every example, or one int per example (a
            list, tuple, 1-D tensor or array of integers); a negative index counts from the last class.
        batch: the number of examples.
        classes: the number of outputs of the forward function.
        labels: a readable list of the classes, for messages.

    Returns:
        (batch,) class indices in ``[0, classes)``.

    Raises:
        ValueError: a missing target, a wrong length, non-integer classes, a class out of range.
    """
    labels = labels or ", ".join(map(str, range(classes)))
    if target is None:
        if classes == 1:
            return torch.zeros(batch, dtype=torch.long, device=device)
        raise ValueError(f"The model has {classes} outputs: pass target= one of the labels {labels}.")
    if isinstance(target, bool):
        raise ValueError(f"target={target!r} is a bool; pass an integer class index, one of {labels}.")
    if isinstance(target, numbers.Integral):
        target_tensor = torch.full((batch,), int(target), dtype=torch.long, device=device)
    elif isinstance(target, (list, tuple, Tensor)) or hasattr(target, "__array__"):
        try:
            target_tensor = torch.as_tensor(target, device=device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"target must hold integer class indices, one per example; could not read {target!r} ({error})."
            ) from None
        if target_tensor.dim() == 0:
            target_tensor = target_tensor.expand(batch)
        if target_tensor.dtype.is_floating_point or target_tensor.dtype == torch.bool or target_tensor.dtype.is_complex:
            raise ValueError(
                f"target must hold integer class indices; got {target_tensor.dtype} values. "
                "Pass e.g. target=[0, 1] or a torch.long tensor."
            )
        if target_tensor.dim() != 1 or target_tensor.shape[0] != batch:
            raise ValueError(
                f"target must give one class per example: {batch} value(s) for a batch of {batch}; got "
                f"shape {tuple(target_tensor.shape)}. Pass a single int to explain the same class for "
                "every example."
            )
        target_tensor = target_tensor.long()
    else:
        raise ValueError(
            f"target must be an int, or a list or 1-D tensor of class indices (one per example); got {type(target).__name__}."
        )
    outside = (target_tensor < -classes) | (target_tensor >= classes)
    if bool(outside.any()):
        if isinstance(target, numbers.Integral) or (isinstance(target, Tensor) and target.dim() == 0):
            found = f"target={int(target)} is"
        else:
            bad = outside.nonzero().flatten().tolist()
            found = ", ".join(f"target[{i}]={int(target_tensor[i])}" for i in bad[:5]) + (" are" if len(bad) > 1 else " is")
        raise ValueError(
            f"{found} out of range: the model has {classes} output(s) (indices 0 to {classes - 1}, or -{classes} to -1 "
            f"counted from the end), the labels are {labels}."
        )
    # Negative indices count from the last class, as Captum reads them (output[:, -1]).
    return torch.where(target_tensor < 0, target_tensor + classes, target_tensor)


# --------------------------------------------------------------------------------------------
# Outputs


def check_max_memory(max_memory: Any) -> None:
    """``max_memory`` is a positive number of bytes (an int, or a float with an integral value)."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, numbers.Real):
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}.")
    if not math.isfinite(float(max_memory)) or max_memory <= 0 or float(max_memory) != math.floor(float(max_memory)):
        raise ValueError(f"max_memory must be a positive whole number of bytes, got {max_memory!r}.")
