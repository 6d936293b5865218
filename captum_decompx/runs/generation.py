"""Causal language models in data set runs (``captum-decompx attribute`` with a causal LM).

Each row's text is a prompt; its target is the row's target column, or the model's greedy
continuation of ``generate`` tokens. :class:`~captum_decompx.LLMDecompX` explains every target
token of a row from one pass over the prompt and the target. The parts hold one row per input row:

==================  ======================  ===================================================
column              type                    content
==================  ======================  ===================================================
``id``              int64                   row index in the input (0-based)
``text``            string                  the prompt
``target``          string                  the target text (given, or decoded when generated)
``tokens``          list<string>            the prompt's tokens, special tokens included
``input_ids``       list<int32>             the prompt's token ids
``target_tokens``   list<string>            the target's tokens
``target_ids``      list<int32>             the target's token ids
``logits``          list<float32>           each target token's next-token logit
``probs``           list<float32>           each target token's probability
``attributions``    list<list<float32>>     targets x (prompt + targets - 1): row ``t`` holds the
                                            share of every token before target ``t`` in its
                                            logit (prompt, then earlier targets; zero after)
``bias``            list<float32>           each logit's share assigned to no token
``label``           int64                   the label (only with a label column)
==================  ======================  ===================================================

For every row and target ``t``: ``sum(attributions[t]) + bias[t] == logits[t]``, checked before
a part is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..adapters import task_of
from ..llm import LLMDecompX
from .tables import TextTable

#: Largest |sum of contributions + bias - logit| allowed, relative to max(1, |logit|).
COMPLETENESS_TOLERANCE = 1e-4


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a causal language model (``*ForCausalLM``, ``*LMHeadModel``)."""
    return task_of(model) == "causal LM"


def load_causal_lm(source: Union[None, str, Path]) -> Optional[tuple[nn.Module, Any, str]]:
    """Load a causal LM (float32, eval mode) and its tokenizer from a folder or hub id whose config
    names a causal LM architecture; None for any other source (it is loaded as a classifier)."""
    if source is None:
        return None
    from ..demo import ModelLoadError, resolve_model_source

    location, options = resolve_model_source(source)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(location, **options)
    except Exception:  # not readable here: the classifier loader reports it
        return None
    names = getattr(config, "architectures", None) or []
    if not any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names):
        return None
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **options)
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
    except Exception as error:
        raise ModelLoadError(f"Cannot load the causal LM at {source}: {str(error).splitlines()[0]}") from error
    return model.eval(), tokenizer, str(source)


def causal_output_schema(with_labels: bool) -> Any:
    """The ``pyarrow`` schema of a causal LM run's parts (module docstring)."""
    import pyarrow as pa

    fields = [
        pa.field("id", pa.int64()),
        pa.field("text", pa.string()),
        pa.field("target", pa.string()),
        pa.field("tokens", pa.list_(pa.string())),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("target_tokens", pa.list_(pa.string())),
        pa.field("target_ids", pa.list_(pa.int32())),
        pa.field("logits", pa.list_(pa.float32())),
        pa.field("probs", pa.list_(pa.float32())),
        pa.field("attributions", pa.list_(pa.list_(pa.float32()))),
        pa.field("bias", pa.list_(pa.float32())),
    ]
    if with_labels:
        fields.append(pa.field("label", pa.int64()))
    return pa.schema(fields)


def attribute_causal_part(
    explainer: LLMDecompX,
    tokenizer: Any,
    table: TextTable,
    start: int,
    end: int,
    *,
    schema: Any,
    max_length: int,
    generate: Optional[int],
    device: torch.device,
    on_batch: Optional[Callable[[int], None]] = None,
) -> tuple[Any, int, int]:
    """Explain rows ``[start, end)`` of ``table``: each prompt (``table.texts``) with its target
    (``table.text_pairs``, the target column) or its greedy continuation of ``generate`` tokens,
    one :meth:`LLMDecompX.attribute` call (one pass) per row.

    A prompt longer than ``max_length`` less the target keeps its last tokens (the ones next to
    the target) and counts as truncated.

    Returns:
        The part as a ``pyarrow.Table``, the number of truncated rows, and 0 (no padding: every
        row is explained on its own).

    Raises:
        RuntimeError: a row's contributions plus bias do not give its logits (nothing is written).
        ValueError: a target is empty, or longer than ``max_length`` allows.
    """
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    truncated = 0
    for index in range(start, end):
        prompt_ids = tokenizer(table.texts[index], return_tensors="pt")["input_ids"]
        if generate is None:
            assert table.text_pairs is not None, "the target column is read as the pair column"
            target_ids = tokenizer(table.text_pairs[index], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            if target_ids.numel() == 0:
                raise ValueError(f"Row {index}: the target text tokenizes to nothing; give at least one token.")
            n_targets = target_ids.numel()
        else:
            target_ids, n_targets = None, generate
        room = max_length - n_targets
        if room < 1:
            raise ValueError(
                f"Row {index}: a target of {n_targets} tokens leaves no room for the prompt within the "
                f"maximum length {max_length}; shorten the target or raise --max-length."
            )
        if prompt_ids.shape[1] > room:
            prompt_ids = prompt_ids[:, -room:]
            truncated += 1
        prompt_ids = prompt_ids.to(device)
        if target_ids is None:
            result = explainer.attribute(prompt_ids, gen_args={"max_new_tokens": generate, "do_sample": False})
        else:
            result = explainer.attribute(prompt_ids, target=target_ids.to(device))
        n_targets = result.token_attr.shape[0]
        # Row t: the prompt's shares, then the earlier targets' (the last target precedes none).
        attributions = torch.cat([result.token_attr, result.generated_attr[:, : n_targets - 1]], dim=1).float()
        bias, logits = result.bias.float(), result.logits.float()
        error = float((attributions.sum(1) + bias - logits).abs().max())
        if not error <= COMPLETENESS_TOLERANCE * max(1.0, float(logits.abs().max())):
            raise RuntimeError(
                f"Row {index}: the contributions plus the bias differ from the logits by {error:.3g}; nothing "
                "was written for its part. This is a bug in DecompX: please report it with the row."
            )
        ids = _tokens_of(prompt_ids)
        generated_ids = [int(i) for i in result.target_ids.tolist()]
        row = {
            "id": index,
            "text": table.texts[index],
            "target": table.text_pairs[index]
            if generate is None and table.text_pairs is not None
            else tokenizer.decode(generated_ids),
            "tokens": tokenizer.convert_ids_to_tokens(ids),
            "input_ids": ids,
            "target_tokens": list(result.output_tokens),
            "target_ids": list(generated_ids),
            "logits": logits.tolist(),
            "probs": result.output_probs.float().tolist(),
            "attributions": attributions.tolist(),
            "bias": bias.tolist(),
        }
        if table.labels is not None:
            row["label"] = table.labels[index]
        for name in schema.names:
            columns[name].append(row[name])
        if on_batch is not None:
            on_batch(1)
    return pa.table(columns, schema=schema), truncated, 0


def _tokens_of(ids: Tensor) -> list[int]:
    return [int(i) for i in ids[0].tolist()]


__all__ = ["attribute_causal_part", "causal_output_schema", "is_causal_lm", "load_causal_lm"]
