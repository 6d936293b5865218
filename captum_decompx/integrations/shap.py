"""DecompX in SHAP: explanations, a text plot that keeps its colours, and SHAP as a Captum method.

- :func:`to_shap_explanation` turns a :class:`~captum_decompx.DecompXOutput` into a
  ``shap.Explanation``: ``values`` are the tokens' contributions to every class logit and
  ``base_values`` the part of each logit no token carries (zero with the default
  ``include_biases=True``), so that ``values.sum(tokens) + base_values == logits``, SHAP's own
  additivity. ``shap.plots.text``, ``waterfall`` and ``bar`` take it as they take SHAP's results.
- :func:`text_plot_html` is ``shap.plots.text`` as a standalone page whose colours show in a
  browser: under numpy 2, SHAP 0.51 writes colours as ``rgba(np.float64(255.0), ...)``, which
  browsers reject, so every token is drawn without its background (SHAP's own explanations too).
- :class:`ShapPartitionAttribution` runs SHAP's Partition explainer (the default of
  ``shap.Explainer`` for text) behind Captum's ``Attribution`` interface, so that
  :func:`captum_decompx.evaluate_faithfulness` can score it next to DecompX on the same sentences.

Needs the ``shap`` extra: ``pip install "captum-decompx[shap]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import shap  # the third-party package: absolute import (this module is captum_decompx.integrations.shap)
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from ..attribution import DecompXOutput
from ._html import fix_numpy_scalar_reprs

__all__ = ["ShapPartitionAttribution", "fix_numpy_colour_reprs", "to_shap_explanation", "text_plot_html", "token_strings"]

LabelNames = Union[None, Sequence[str], Mapping[int, str]]


def _label_list(label_names: LabelNames, classes: int) -> list[str]:
    if label_names is None:
        return [f"class {index}" for index in range(classes)]
    if isinstance(label_names, Mapping):
        names = [str(label_names.get(index, label_names.get(str(index), f"class {index}"))) for index in range(classes)]  # type: ignore[call-overload]
    else:
        names = [str(name) for name in label_names]
    if len(names) != classes:
        raise ValueError(f"label_names has {len(names)} names but the model has {classes} classes.")
    return names


def token_strings(ids: Sequence[int], tokenizer: Any) -> list[str]:
    """The text each token adds, with its leading whitespace, so that joining them gives the text.

    Decodes growing prefixes of ``ids`` and keeps what each token adds (``" good"``, ``"s"`` for
    ``##s``); special tokens keep their own text (``"[CLS]"``), since they carry contributions too.
    Where decoding a longer prefix rewrites the earlier text (some tokenizers merge spaces), the
    token's own string is used instead, preceded by a space.

    Args:
        ids: the token ids of one sequence, without padding.
        tokenizer: a Hugging Face tokenizer.

    Returns:
        one string per id.
    """
    ids = [int(token) for token in ids]
    raw = tokenizer.convert_ids_to_tokens(ids)
    pieces: list[str] = []
    previous = ""
    for position in range(len(ids)):
        text = tokenizer.decode(ids[: position + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.startswith(previous) and len(text) > len(previous):
            pieces.append(text[len(previous) :])
        else:
            pieces.append((" " if position else "") + str(raw[position]))
        previous = text
    return pieces


def to_shap_explanation(
    output: DecompXOutput,
    input_ids: Tensor,
    tokenizer: Any,
    *,
    attention_mask: Optional[Tensor] = None,
    label_names: LabelNames = None,
) -> shap.Explanation:
    """A ``shap.Explanation`` of DecompX's per-class token contributions.

    Padding (``attention_mask == 0``) is dropped, so the examples of a batch may have different
    lengths (SHAP stores them as ragged object arrays, as its own text explanations).

    Args:
        output: the result of ``DecompX(...).decompose(input_ids, ...)`` with the head
            (``attributions`` (batch, seq, classes) and ``bias`` (batch, classes)).
        input_ids: (batch, seq) the ids that were decomposed, or (seq,) for one example.
        tokenizer: the model's tokenizer (turns the ids into the displayed token texts).
        attention_mask: (batch, seq) or (seq,), 1 on real tokens; None when there is no padding.
        label_names: the class names, a list or a mapping such as ``model.config.id2label``;
            default ``"class 0"``, ``"class 1"``, ...

    Returns:
        for (batch, seq) ids an Explanation of shape (batch, tokens, classes) with
        ``base_values`` (batch, classes); for (seq,) ids one of shape (tokens, classes) with
        ``base_values`` (classes,). In both, ``values.sum(tokens) + base_values`` equals
        ``output.logits``. ``data`` holds each token's text, ``output_names`` the class names.
    """
    if not isinstance(output, DecompXOutput):
        raise TypeError(f"to_shap_explanation takes the DecompXOutput of DecompX.decompose(); got {type(output).__name__}.")
    if output.bias is None or output.attributions.dim() != 3:
        raise ValueError(
            "This output has no per-class logit shares (it was computed with include_head=False, where the "
            "attributions are norms of hidden-state pieces): a SHAP explanation needs values that add up to the "
            "logits. Decompose with the head (include_head=True, the default)."
        )
    single = input_ids.dim() == 1
    ids = input_ids.unsqueeze(0) if single else input_ids
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq) or (seq,); got shape {tuple(input_ids.shape)}.")
    batch, seq, classes = output.attributions.shape
    if tuple(ids.shape) != (batch, seq):
        raise ValueError(
            f"input_ids {tuple(ids.shape)} do not match the decomposition's (batch, seq) = ({batch}, {seq}): "
            "pass the ids that were decomposed."
        )
    if attention_mask is None:
        real = torch.ones(batch, seq, dtype=torch.bool)
    else:
        mask = attention_mask.unsqueeze(0) if attention_mask.dim() == 1 else attention_mask
        if tuple(mask.shape) != (batch, seq):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}.")
        real = mask.detach().cpu().bool()
    names = _label_list(label_names, classes)
    attributions = output.attributions.detach().cpu().double().numpy()
    base_values = output.bias.detach().cpu().double().numpy()
    ids_cpu = ids.detach().cpu()
    values, data, feature_names = [], [], []
    for row in range(batch):
        keep = real[row].numpy()
        row_ids = ids_cpu[row][real[row]].tolist()
        tokens = token_strings(row_ids, tokenizer)
        values.append(attributions[row][keep])
        data.append(np.array(tokens, dtype=object))
        feature_names.append([token.strip() for token in tokens])
    if single:
        return shap.Explanation(
            values=values[0],
            base_values=base_values[0],
            data=data[0],
            feature_names=feature_names[0],
            output_names=names,
        )
    return shap.Explanation(
        values=_ragged(values),
        base_values=base_values,
        data=_ragged(data),
        feature_names=feature_names,
        output_names=names,
    )


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    """An object array of per-example arrays (SHAP's layout for texts of different lengths)."""
    out = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        out[index] = row
    return out


def fix_numpy_colour_reprs(html: str) -> str:
    """Replace numpy 2's scalar reprs (``np.float64(255.0)``) in SHAP's HTML with plain numbers."""
    return fix_numpy_scalar_reprs(html)


def text_plot_html(
    explanation: shap.Explanation,
    path: Union[None, str, Path] = None,
    *,
    title: Optional[str] = None,
    **text_options: Any,
) -> str:
    """SHAP's text plot as a standalone HTML page whose colours render under numpy 2.

    Args:
        explanation: any ``shap.Explanation`` that ``shap.plots.text`` takes (from
            :func:`to_shap_explanation` or from SHAP's own explainers).
        path: also write the page there.
        title: a heading above the plot (HTML-escaped).
        **text_options: passed to ``shap.plots.text`` (``grouping_threshold``, ``cmax``, ...).

    Returns:
        the page's HTML. Open it in a browser, or show it in a notebook with
        ``IPython.display.HTML``.
    """
    import html as html_module

    body = shap.plots.text(explanation, display=False, **text_options)
    body = fix_numpy_colour_reprs(body)
    heading = f"<h3 style='font-family: sans-serif'>{html_module.escape(title)}</h3>\n" if title else ""
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>SHAP text plot</title></head>\n"
        f"<body>\n{heading}{body}\n</body></html>\n"
    )
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


class ShapPartitionAttribution(Attribution):
    """SHAP's Partition explainer on a text classifier, as a Captum ``Attribution``.

    This is what ``shap.Explainer(f, shap.maskers.Text(tokenizer))`` does for text: Owen values
    over the hierarchy of the tokens, masking with the tokenizer's mask token, ``max_evals``
    model calls per sentence. The result is one score per token for the target class logit (or
    probability, ``output="probabilities"``), placed at the token's position in ``input_ids``
    (zero on padding), so that :func:`captum_decompx.evaluate_faithfulness` can rank tokens with it.

    SHAP explains text, not ids: each example's real ids are decoded and the text re-tokenized;
    an example whose ids do not survive that round trip raises an error.

    Args:
        model: a Hugging Face sequence classifier in eval mode.
        tokenizer: its tokenizer (with a mask token).
        max_evals: SHAP's budget of model evaluations per sentence (SHAP's default for text: 500).
        batch_size: texts per model call inside SHAP.
        output: ``"logits"`` (what DecompX explains) or ``"probabilities"``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        max_evals: int = 500,
        batch_size: int = 50,
        output: str = "logits",
    ) -> None:
        if output not in ("logits", "probabilities"):
            raise ValueError(f"output={output!r} is not valid; choose 'logits' or 'probabilities'.")
        if max_evals < 1:
            raise ValueError(f"max_evals must be positive, got {max_evals}.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_evals = int(max_evals)
        self.output = output
        super().__init__(self._predict)
        self.explainer = shap.Explainer(self._predict, shap.maskers.Text(tokenizer), algorithm="partition", batch_size=batch_size)

    @classmethod
    def get_name(cls) -> str:
        return "SHAP Partition"

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def _predict(self, texts: Any) -> np.ndarray:
        """(len(texts), classes) logits or probabilities of a list of strings."""
        device = next(self.model.parameters()).device
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
        with torch.no_grad():
            logits = self.model(**encoded).logits.float()
        if self.output == "probabilities":
            logits = torch.softmax(logits, dim=-1)
        return logits.cpu().numpy()

    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, tuple[Tensor]],
        target: Union[None, int, Sequence[int], Tensor] = None,
        additional_forward_args: Any = None,
        show_progress: bool = False,
    ) -> Tensor:
        """SHAP values of the target class for every token.

        Args:
            inputs: input ids (batch, seq), or a 1-tuple of them.
            target: the class to explain: an int, or one per example.
            additional_forward_args: ``(attention_mask, ...)`` as for the model; only the mask is
                read (which positions are real tokens).
            show_progress: a progress bar over the examples.

        Returns:
            (batch, seq) float32 scores, zero on padding.
        """
        input_ids = inputs[0] if isinstance(inputs, tuple) else inputs
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq); got {tuple(input_ids.shape)}.")
        batch, seq = input_ids.shape
        extra = additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)
        mask = extra[0] if extra and extra[0] is not None else torch.ones_like(input_ids)
        if target is None:
            raise ValueError("Give the class to explain: target=int or one per example.")
        targets = torch.as_tensor(target).flatten().tolist()
        if len(targets) == 1:
            targets = targets * batch
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}.")
        scores = torch.zeros(batch, seq, dtype=torch.float32)
        rows: Any = range(batch)
        if show_progress:
            from tqdm.auto import tqdm

            rows = tqdm(rows, desc="SHAP Partition", unit="example")
        for row in rows:
            real = mask[row].bool().cpu()
            ids = input_ids[row].cpu()[real].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if self.tokenizer(text)["input_ids"] != ids:
                raise ValueError(
                    f"Example {row}: its ids do not come back from decoding and re-tokenizing ({text!r}); SHAP's text "
                    "masker explains text, so it cannot place its values on these tokens."
                )
            explanation = self.explainer([text], max_evals=self.max_evals, silent=True)
            values = np.asarray(explanation.values[0], dtype=np.float64)
            if values.shape[0] != len(ids):
                raise ValueError(f"Example {row}: SHAP returned {values.shape[0]} token values for {len(ids)} tokens.")
            positions = torch.nonzero(real).flatten()
            scores[row, positions] = torch.as_tensor(values[:, int(targets[row])], dtype=torch.float32)
        return scores.to(input_ids.device)
