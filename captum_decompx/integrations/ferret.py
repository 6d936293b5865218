"""DecompX as a ferret explainer, for ferret's faithfulness benchmark.

::

    from ferret import Benchmark
    from captum_decompx.integrations.ferret import DecompXExplainer

    bench = Benchmark(model, tokenizer, explainers=[DecompXExplainer(model, tokenizer)])
    explanations = bench.explain("a good piece of work", target=1)        # L1-normalized
    evaluations = bench.evaluate_explanations(explanations, target=1)      # comprehensiveness, ...

What ferret does with DecompX's values:

- **L1 normalization.** ``Benchmark.explain`` divides each explanation by its L1 norm (the sum of
  the absolute scores, special tokens included). DecompX's scores stop being logit shares: they no
  longer add up to the logit, and their sum is some number in [-1, 1]. Signs and ranking are
  unchanged, so comprehensiveness, sufficiency (tokens ranked by score) and Tau-LOO (a rank
  correlation) are not affected; thresholds on the scores (``based_on="th"``) and comparisons of
  magnitudes across sentences or explainers are. ``explainer(text, target)`` returns the
  unnormalized values (``normalize_scores=False`` in ``Benchmark.explain`` keeps them).
- **Probability scoring.** ferret's faithfulness measures drops in the softmax *probability* of
  the target class when tokens are removed (deleted by default, not masked), and by default
  (``only_pos=True``) removes only tokens with positive scores. DecompX decomposes the target
  class's *logit*; the probability depends on the differences between logits. With
  ``score="margin"`` the explainer returns each token's contribution to the target logit minus
  the mean of the other classes' logits, which for two classes is exactly the log-odds that the
  probability is a sigmoid of (still a decomposition: the margins add up to the logit margin).

Needs the ``ferret`` extra: ``pip install "captum-decompx[ferret]"`` (ferret-xai 0.4.1; 0.4.2
pins captum<0.8, transformers<5 and numpy<2).
"""

from __future__ import annotations

from typing import Any, Union

import torch
from ferret.explainers import BaseExplainer  # the third-party package (this module is captum_decompx.integrations.ferret)
from ferret.explainers.explanation import Explanation
from torch import Tensor, nn

from ..attribution import DecompX

__all__ = ["SCORES", "DecompXExplainer"]

#: what the explainer's scores decompose: the target logit, or its margin over the other classes.
SCORES = ("logit", "margin")


class DecompXExplainer(BaseExplainer):
    """ferret explainer: DecompX's contribution of every token (special tokens included) to the target.

    Args:
        model: a Hugging Face sequence classifier that DecompX supports, in eval mode.
        tokenizer: its tokenizer.
        score: ``"logit"`` (each token's share of the target logit) or ``"margin"`` (its share of
            the target logit minus the mean of the other logits; see the module's notes).
        **options: :class:`captum_decompx.DecompX` options (``include_biases``, ``method``, ...).
    """

    NAME = "DecompX"

    def __init__(self, model: nn.Module, tokenizer: Any, *, score: str = "logit", **options: Any) -> None:
        if score not in SCORES:
            raise ValueError(f"score={score!r} is not valid; choose one of {SCORES}.")
        if options.get("include_head") is False:
            raise ValueError(
                "include_head=False gives norms of hidden-state pieces, not shares of a class score; ferret needs the latter."
            )
        super().__init__(model, tokenizer)
        self.score = score
        self.options = dict(options)
        self.decompx = DecompX(model, **options)
        suffix = []
        if options.get("include_biases") is False:
            suffix.append("w/o bias")
        if score == "margin":
            suffix.append("margin")
        if suffix:
            self.NAME = f"DecompX ({', '.join(suffix)})"

    def _target_index(self, target: Union[int, str], classes: int) -> int:
        if isinstance(target, str):
            label2id = getattr(self.helper.model.config, "label2id", None) or {}
            if target not in label2id:
                raise ValueError(f"Unknown label {target!r}; the model's labels are {sorted(label2id)}.")
            target = int(label2id[target])
        target = int(target)
        if not 0 <= target < classes:
            raise ValueError(f"target={target} is out of range for a model with {classes} classes.")
        return target

    def compute_feature_importance(self, text: str, target: Union[int, str] = 1, **explainer_args: Any) -> Explanation:
        """One explanation of ``text`` for the class ``target``.

        Args:
            text: the sentence (tokenized as ferret does, truncated to the model's maximum length).
            target: the class index, or its label.
            **explainer_args: none are taken (set DecompX's options in the constructor).

        Returns:
            ferret's ``Explanation`` with ``scores`` (tokens,) in logit units, one per token of
            ``get_tokens(text)``: ``scores.sum()`` is the target logit (``score="logit"``) or the
            logit margin (``"margin"``), up to the biases' share when ``include_biases=False``.
        """
        if explainer_args:
            raise TypeError(
                f"DecompXExplainer takes no explainer arguments ({', '.join(sorted(explainer_args))}); pass DecompX options to the constructor."
            )
        item = self._tokenize(text)
        device = next(self.helper.model.parameters()).device
        input_ids = item["input_ids"].to(device)
        args: tuple[Tensor, ...] = (item["attention_mask"].to(device),)
        if "token_type_ids" in item:
            args = args + (item["token_type_ids"].to(device),)
        output = self.decompx.decompose(input_ids, args)
        attributions = output.attributions[0].detach().double()  # (tokens, classes)
        index = self._target_index(target, attributions.shape[-1])
        scores = attributions[:, index]
        if self.score == "margin" and attributions.shape[-1] > 1:
            others = torch.cat([attributions[:, :index], attributions[:, index + 1 :]], dim=1)
            scores = scores - others.mean(dim=1)
        length = int(item["attention_mask"].sum())
        return Explanation(text, self.get_tokens(text), scores[:length].cpu().numpy(), self.NAME, index)
