"""What the HTML views and the figures show of an explanation: the real (non-padding) tokens, class
names, values scaled to [-1, 1], the rows of the per-class view and one position's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar, Union, cast

import torch
from torch import Tensor

from ..attribution import DecompXOutput

LabelNames = Union[Sequence[str], Mapping[int, str], None]
PathLike = Union[str, Path]
View = TypeVar("View")


def saved(view: View, path: Optional[PathLike], **savefig_options: Any) -> View:
    """``view`` (a standalone HTML page, or a matplotlib figure), first written to ``path`` when one
    is given: the page as UTF-8 text, the figure by ``savefig(path, **savefig_options)``."""
    if path is not None:
        if isinstance(view, str):
            Path(path).write_text(view, encoding="utf-8")
        else:
            cast(Any, view).savefig(path, **savefig_options)  # a matplotlib Figure
    return view


def _label(names: LabelNames, index: Optional[int]) -> Any:
    if index is None:
        return ""
    if names is None:
        return index
    if isinstance(names, Mapping):
        by_key: Mapping[Any, Any] = names  # config.id2label has int keys; JSON-loaded ones may be str
        return by_key.get(index, by_key.get(str(index), index))
    return names[index] if 0 <= index < len(names) else index


def real_positions(input_ids: Tensor, tokenizer: Any, attention_mask: Optional[Tensor] = None) -> Tensor:
    """(seq,) bool for one example: False at padding (from the mask, else the pad token id)."""
    if attention_mask is not None:
        return attention_mask.bool()
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return input_ids != pad


def example_tokens(input_ids: Tensor, tokenizer: Any, attention_mask: Optional[Tensor] = None) -> list[str]:
    """The token strings of one example (seq,), padding dropped."""
    keep = real_positions(input_ids, tokenizer, attention_mask)
    return list(tokenizer.convert_ids_to_tokens(input_ids[keep].tolist()))


def _normalized(values: Tensor) -> Tensor:
    """Divide by the largest magnitude (zeros stay zeros), so that values lie in [-1, 1]."""
    scale = values.abs().max() if values.numel() else torch.tensor(0.0)
    return values / scale if float(scale) > 0 else torch.zeros_like(values)


def _mask_row(attention_mask: Optional[Tensor], row: int) -> Optional[Tensor]:
    return None if attention_mask is None else attention_mask[row]


def _class_rows(output: DecompXOutput, input_ids: Tensor, tokenizer: Any, index: int, attention_mask, label_names):
    if output.attributions.dim() != 3:
        raise ValueError(
            "The per-class view needs per-class attributions (batch, seq, classes): decompose with include_head=True."
        )
    keep = real_positions(input_ids[index], tokenizer, _mask_row(attention_mask, index))
    tokens = list(tokenizer.convert_ids_to_tokens(input_ids[index][keep].tolist()))
    contributions = output.attributions[index][keep].detach().float().cpu()  # (n, classes)
    scale = float(contributions.abs().max()) if contributions.numel() else 0.0
    probabilities = torch.softmax(output.logits[index].float(), dim=-1)
    predicted = int(probabilities.argmax())
    rows = []
    for cls in range(contributions.shape[1]):
        values = contributions[:, cls]
        name = str(_label(label_names, cls))
        rows.append(
            {
                "name": name,
                "predicted": cls == predicted,
                "logit": float(output.logits[index, cls]),
                "probability": float(probabilities[cls]),
                "raw": values,
                "normalized": values / scale if scale > 0 else torch.zeros_like(values),
            }
        )
    return tokens, rows, scale


def _position_values(scores: Tensor, tokens: Sequence[str], position: int) -> Tensor:
    values = scores.detach().float().cpu().flatten()
    if values.shape[0] != len(tokens):
        raise ValueError(
            f"scores has {values.shape[0]} values but tokens has {len(tokens)}: pass one example's "
            "attributions (seq,) and its tokens (e.g. tokenizer.convert_ids_to_tokens(input_ids[0]))."
        )
    if not 0 <= position < len(tokens):
        raise ValueError(f"position {position} is outside the {len(tokens)} tokens.")
    return values
