"""DecompX as an inseq attribution method for decoder-only language models.

Importing this module registers ``"decompx"`` with inseq::

    import inseq
    import captum_decompx.integrations.inseq  # noqa: F401  (registers "decompx")

    model = inseq.load_model(hf_model, "decompx", tokenizer=tokenizer)               # options: below
    out = model.attribute("The cat sat on the", attributed_fn="logit", step_scores=["logit"])
    out.show()

At every generation step the prefix tokens' attributions are DecompX's decomposition of the
*logit* of the generated token at the last position (``model(input_ids, attention_mask).logits[:, -1]``),
so they sum to inseq's ``logit`` step score (plus, with ``include_biases=False``, the biases'
share, reported as the step score ``decompx_bias``). Options of :class:`captum_decompx.DecompX`
(``include_biases``, ``bias_decomposition``, ``include_ffn``, ``ffn_approximation``,
``max_memory``, ``algorithm``) are passed through ``inseq.load_model(model, "decompx", **options)``.

What is explained: inseq's default attributed function is the target token's *probability*;
DecompX decomposes logits, so with that default a warning says that the logit is explained
instead, and any other attributed function (log-probabilities, contrastive scores, custom
functions) is refused with an error. Pass ``attributed_fn="logit"`` to say what you get.

Supported: the decoder-only models DecompX supports (GPT-2, Llama, Qwen2, Mistral), batched and
left-padded prompts; the encoder-decoders DecompX supports (T5, the BART family): each step's logit
over the source (``source_attributions``) and, with ``attribute_target=True``, the target prefix
(``target_attributions``); without it, the prefix's share is the step score
``decompx_target_prefix``.

Needs the ``inseq`` extra: ``pip install "captum-decompx[inseq]"``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Union

import inseq  # the third-party package (this module is captum_decompx.integrations.inseq)
import torch
from inseq.attr import FeatureAttribution
from inseq.attr.step_functions import get_step_function
from inseq.data import CoarseFeatureAttributionStepOutput
from torch import Tensor

from ..attribution import DecompX
from ._html import fix_numpy_scalar_reprs

__all__ = ["BIAS_STEP_SCORE", "METHOD_NAME", "PREFIX_STEP_SCORE", "DecompXInseqAttribution", "show_html"]

#: the name the method is registered under in inseq.
METHOD_NAME = "decompx"
#: the step score that holds the biases' share of each logit when ``include_biases=False``.
BIAS_STEP_SCORE = "decompx_bias"
#: for an encoder-decoder attributed without ``attribute_target=True``: the target prefix's share
#: of each logit (with the source attributions and the bias share, the logit).
PREFIX_STEP_SCORE = "decompx_target_prefix"

# DecompX options that make sense inside inseq (include_head=False gives norms, not logit shares).
_OPTIONS = ("include_biases", "bias_decomposition", "include_ffn", "ffn_approximation", "algorithm", "max_memory")


class DecompXInseqAttribution(FeatureAttribution):
    """inseq's ``"decompx"`` method: each generated token's logit decomposed over the prefix tokens.

    Built by inseq (``inseq.load_model(model, "decompx", tokenizer=..., **options)``), not by hand.

    Args:
        attribution_model: the inseq model (a decoder-only Hugging Face model).
        **options: :class:`captum_decompx.DecompX` options: ``include_biases``,
            ``bias_decomposition``, ``include_ffn``, ``ffn_approximation``, ``max_memory``, and
            ``algorithm`` (``"auto"``, ``"exact"`` or ``"fast"``).
    """

    method_name = METHOD_NAME

    def __init__(self, attribution_model: Any, **options: Any) -> None:
        super().__init__(attribution_model, hook_to_model=False)
        self.encoder_decoder = bool(attribution_model.is_encoder_decoder)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            hint = (
                " include_head=False gives norms of hidden-state pieces, which do not add up to the logit inseq attributes."
                if "include_head" in unknown
                else ""
            )
            raise TypeError(f"Unknown DecompX option(s) for inseq: {', '.join(unknown)}; valid: {', '.join(_OPTIONS)}.{hint}")
        # DecompX reads token ids and runs the model on them (not on embeddings).
        self.attribute_batch_ids = True
        # inseq allows attribute_target=True only when it believes the forward pass reads embeddings;
        # DecompX runs the model on the ids it finds in the arguments either way.
        self.forward_batch_embeds = self.encoder_decoder
        self.use_baselines = False
        model = attribution_model.model
        self.options = dict(options)
        forward = self._seq2seq_logits if self.encoder_decoder else self._last_position_logits
        self.decompx = DecompX(forward, model=model, **options)
        self._logit_fn = get_step_function("logit")
        self._probability_fn = get_step_function("probability")
        self.hook()

    def _last_position_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, vocab) the next-token logits, as inseq's ``logit`` step score reads them."""
        return self.attribution_model.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -1, :]

    def _seq2seq_logits(self, source_ids: Tensor, target_ids: Tensor, source_mask: Tensor, target_mask: Tensor) -> Tensor:
        """(batch, target, vocab) an encoder-decoder's logits at every position of the target prefix."""
        model = self.attribution_model.model
        return model(
            input_ids=source_ids, attention_mask=source_mask, decoder_input_ids=target_ids, decoder_attention_mask=target_mask
        ).logits

    def _check_attributed_fn(self, attributed_fn: Callable[..., Any]) -> None:
        if attributed_fn is self._logit_fn:
            return
        name = getattr(attributed_fn, "__name__", repr(attributed_fn))
        if attributed_fn is self._probability_fn:
            warnings.warn(
                "DecompX explains the logit of each generated token, not its probability (inseq's default "
                "attributed_fn): the attributions of a step sum to its 'logit' step score. Pass "
                "attributed_fn='logit' to make this explicit.",
                UserWarning,
                stacklevel=4,
            )
            return
        raise ValueError(
            f"DecompX decomposes the logit of each generated token; it cannot attribute {name}. Pass "
            "attributed_fn='logit' (probabilities and log-probabilities are not sums over tokens), or use a "
            "gradient method of inseq for this attributed function."
        )

    def prepare_and_attribute(self, *args: Any, **kwargs: Any) -> Any:
        """inseq's ``prepare_and_attribute``, recording that the logit was explained."""
        outputs = super().prepare_and_attribute(*args, **kwargs)
        for output in outputs if isinstance(outputs, list) else [outputs]:
            output.info["attributed_fn"] = "logit_fn"
            output.info["decompx_options"] = dict(self.options)
        return outputs

    def attribute(self, batch: Any, attributed_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """inseq's ``attribute``; refuses attributed functions other than the logit (see the module)."""
        self._check_attributed_fn(attributed_fn)
        return super().attribute(batch, self._logit_fn, *args, **kwargs)

    def attribute_step(
        self,
        attribute_fn_main_args: dict[str, Any],
        attribution_args: dict[str, Any] = {},  # noqa: B006  (inseq's signature)
    ) -> CoarseFeatureAttributionStepOutput:
        """One generation step: the prefix's contributions to each row's target-token logit.

        Args:
            attribute_fn_main_args: from inseq: ``inputs`` = (input_ids (batch, prefix),) and
                ``additional_forward_args`` = (input_ids, target_ids (batch, 1), attributed_fn,
                attention_mask (batch, prefix), ...).
            attribution_args: further arguments; DecompX takes none.

        Returns:
            a step output with ``target_attributions`` (batch, prefix), zero on padding, and, with
            ``include_biases=False``, the step score ``decompx_bias`` (batch,).
        """
        if attribution_args:
            raise TypeError(
                f"DecompX takes no attribution arguments ({', '.join(sorted(attribution_args))}); set its options in "
                "inseq.load_model(model, 'decompx', **options)."
            )
        if self.encoder_decoder:
            return self._seq2seq_step(attribute_fn_main_args)
        (input_ids,) = attribute_fn_main_args["inputs"]
        extra = attribute_fn_main_args["additional_forward_args"]
        target_ids, attention_mask = extra[1].reshape(-1), extra[3]
        scores, delta = self.decompx.attribute(
            input_ids,
            target=target_ids,
            additional_forward_args=(attention_mask,),
            return_convergence_delta=True,
        )
        assert isinstance(scores, Tensor)  # ids in, a tensor out (not a 1-tuple)
        step_scores = {}
        if not self.decompx.include_biases:
            step_scores[BIAS_STEP_SCORE] = (-delta).detach().float().cpu()
        return CoarseFeatureAttributionStepOutput(
            source_attributions=None,
            target_attributions=scores.detach().float().cpu(),
            step_scores=step_scores,
        )

    def _seq2seq_step(self, attribute_fn_main_args: dict[str, Any]) -> CoarseFeatureAttributionStepOutput:
        """One generation step of an encoder-decoder: the source's (and, with ``attribute_target=True``,
        the target prefix's) contributions to each row's target-token logit at the prefix's last
        real position.

        inseq passes ``inputs`` = (source_ids,) or (source_ids, prefix_ids), and
        ``additional_forward_args`` = ([prefix embeddings,] source_ids, prefix_ids, target_ids
        (batch, 1), attributed_fn, source_mask, prefix_mask, ...).
        """
        inputs = attribute_fn_main_args["inputs"]
        attribute_target = len(inputs) == 2
        extra = attribute_fn_main_args["additional_forward_args"][0 if attribute_target else 1 :]
        source_ids, prefix_ids, target_ids, _, source_mask, prefix_mask = extra[:6]
        positions = (prefix_mask * torch.arange(1, prefix_mask.shape[1] + 1, device=prefix_mask.device)).argmax(1)
        targets = [(int(position), int(token)) for position, token in zip(positions, target_ids.reshape(-1))]
        (source_scores, prefix_scores), delta = self.decompx.attribute(
            (source_ids, prefix_ids),
            target=targets,
            additional_forward_args=(source_mask, prefix_mask),
            return_convergence_delta=True,
        )
        step_scores = {}
        if not self.decompx.include_biases:
            step_scores[BIAS_STEP_SCORE] = (-delta).detach().float().cpu()
        if not attribute_target:
            step_scores[PREFIX_STEP_SCORE] = prefix_scores.sum(-1).detach().float().cpu()
        return CoarseFeatureAttributionStepOutput(
            source_attributions=source_scores.detach().float().cpu(),
            target_attributions=prefix_scores.detach().float().cpu() if attribute_target else None,
            step_scores=step_scores,
        )


def show_html(output: Any, path: Union[None, str, Path] = None, **show_options: Any) -> str:
    """inseq's ``output.show()`` heatmaps as HTML whose colours render under numpy 2.

    inseq 0.7.1 writes its cell colours as ``rgba(np.float64(...), ...)`` under numpy 2, which
    browsers ignore (every cell is white), for any attribution method.

    Args:
        output: an inseq ``FeatureAttributionOutput`` (or one sequence's output).
        path: also write a standalone page there.
        **show_options: passed to ``output.show`` (``min_val``, ``max_val``, ...).

    Returns:
        the HTML; in a notebook, ``IPython.display.HTML(show_html(out))``.
    """
    html = fix_numpy_scalar_reprs(output.show(display=False, return_html=True, **show_options))
    if path is not None:
        Path(path).write_text(
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'></head><body>\n{html}\n</body></html>\n", encoding="utf-8"
        )
    return html


def _registered() -> bool:
    return METHOD_NAME in inseq.list_feature_attribution_methods()


if not _registered():  # pragma: no cover - inseq discovers subclasses; this guards against future changes
    raise ImportError(f"inseq did not register {METHOD_NAME!r}; this inseq version is not supported (tested: 0.7.1).")
