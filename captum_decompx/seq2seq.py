"""DecompX for encoder-decoders that generate: which source tokens produced each target token.

:class:`Seq2SeqDecompX` is the encoder-decoder counterpart of :class:`~captum_decompx.LLMDecompX`:
it takes a source (text or ids) and a target (text or ids, teacher-forced) or generates one
(greedy or beam search: the sequence ``generate`` returns is the one explained), and returns
Captum's ``LLMAttributionResult`` (as :class:`Seq2SeqDecompXResult`), so that ``token_attr`` (the
target x source matrix), ``seq_attr``, ``plot_token_attr`` and ``plot_seq_attr`` work as for
Captum's LLM methods.

The attribution of a target token is its *logit* decomposed over the source tokens and the target
prefix (the decoder's start token and the target tokens before it). Every row adds up exactly::

    token_attr[t].sum() + skipped_attr[t] + start_attr[t] + generated_attr[t].sum() + bias[t] == logits[t]

Every target position is explained by one decomposition (:meth:`DecompX.decompose_target
<captum_decompx.DecompX.decompose_target>`: one exact propagation of every decoder row, or one frozen
forward pass and one batched backward pass), not one pass per token.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union, cast

import torch
from captum.attr import LLMAttributionResult
from torch import Tensor, nn

from .attribution import DecompX

DEFAULT_GEN_ARGS = {"max_new_tokens": 16, "do_sample": False}

SourceType = Union[str, Tensor]
TargetType = Union[None, str, Sequence[int], Tensor]

__all__ = ["Seq2SeqDecompX", "Seq2SeqDecompXResult"]


class Seq2SeqDecompXResult(LLMAttributionResult):
    """Captum's ``LLMAttributionResult`` with every share of each target token's logit.

    Attributes (besides Captum's ``seq_attr``, ``token_attr`` (targets, source features),
    ``input_tokens``, ``output_tokens``, ``output_probs``):
        generated_attr: (targets, targets), ``[t, s]`` the share of target token ``s`` in the logit
            of target token ``t`` (zero for ``s >= t``).
        start_attr: (targets,), the share of the decoder's start token.
        skipped_attr: (targets,), the share of the source tokens that are not features
            (``skip_tokens``).
        bias: (targets,), the biases' share (zero when the biases are decomposed).
        logits: (targets,), each target token's logit.
        target_ids: (targets,), the explained target tokens.
        decoder_input_ids: (targets,), what the decoder read: the start token, then the targets
            but the last (teacher forcing).
    """

    generated_attr: Tensor
    start_attr: Tensor
    skipped_attr: Tensor
    bias: Tensor
    logits: Tensor
    target_ids: Tensor
    decoder_input_ids: Tensor


class Seq2SeqDecompX:
    """Attribute an encoder-decoder's target tokens to the source with DecompX.

    Args:
        model: a Hugging Face encoder-decoder with a language-model head (T5, BART, mBART, Marian,
            Pegasus, M2M100 / NLLB), in eval mode.
        tokenizer: its tokenizer.
        **options: DecompX options (``include_biases``, ``algorithm``, ``max_memory``, ...).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, **options: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decompx = DecompX(self._logits, model=model, **options)
        if self.decompx.adapter.encoder is None:
            raise ValueError(
                f"Seq2SeqDecompX explains encoder-decoders; {type(model).__name__} is not one. Use LLMDecompX for "
                "a causal language model."
            )

    def _logits(self, source_ids: Tensor, decoder_input_ids: Tensor) -> Tensor:
        return self.model(input_ids=source_ids, decoder_input_ids=decoder_input_ids).logits

    def _device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def _start_id(self) -> int:
        config: Any = self.model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError("The model's config has no decoder_start_token_id: pass the target ids with their start token.")
        return int(start)

    def _eos_ids(self, device: torch.device) -> Tensor:
        """The ids that end a generated sequence (the generation config's, else the model config's)."""
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
        ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return torch.tensor(ids, dtype=torch.long, device=device)

    def _source(self, source: SourceType) -> Tensor:
        if isinstance(source, str):
            if not source:
                raise ValueError("The source is empty: give the text to translate or summarize.")
            ids = self.tokenizer(source, return_tensors="pt")["input_ids"]
        elif isinstance(source, Tensor):
            ids = source if source.dim() == 2 else source.unsqueeze(0)
        else:
            raise TypeError(f"The source must be text or token ids, got {type(source).__name__}.")
        if ids.shape[0] != 1 or ids.shape[1] == 0:
            raise ValueError(f"Seq2SeqDecompX explains one non-empty source at a time; got ids of shape {tuple(ids.shape)}.")
        return ids.to(self._device())

    def _decoder_sequence(self, source_ids: Tensor, target: TargetType, gen_args: Optional[dict]) -> Tensor:
        """(length,) the decoder's start token followed by the target tokens."""
        if target is None:
            args = {**DEFAULT_GEN_ARGS, **(gen_args or {})}
            with torch.no_grad():
                generated = cast(Any, self.model).generate(source_ids, attention_mask=torch.ones_like(source_ids), **args)
            sequence = generated[0]
            ends = torch.isin(sequence[1:], self._eos_ids(sequence.device)).nonzero().flatten()
            if len(ends):  # the sequence ends at its first end-of-sequence token; what follows is padding
                sequence = sequence[: int(ends[0]) + 2]
            return sequence
        if isinstance(target, str):
            ids = self.tokenizer(text_target=target, return_tensors="pt")["input_ids"][0]
        else:
            ids = torch.as_tensor(target).flatten()
        if ids.numel() == 0:
            raise ValueError("The target is empty: give at least one token to explain.")
        start = torch.tensor([self._start_id()], dtype=ids.dtype)
        return torch.cat([start, ids]).to(source_ids.device)

    def attribute(
        self,
        source: SourceType,
        target: TargetType = None,
        skip_tokens: Union[None, Sequence[int], Sequence[str]] = None,
        gen_args: Optional[dict] = None,
    ) -> Seq2SeqDecompXResult:
        """Attribute each target token's logit to the source tokens and the target prefix.

        Args:
            source: the source text, or its ids (seq,) / (1, seq).
            target: the target to explain, teacher-forced: text (tokenized as a target) or ids,
                without the decoder's start token; None generates it with ``gen_args`` (default
                greedy, ``max_new_tokens=16``; ``num_beams`` for beam search: the returned
                sequence is explained).
            skip_tokens: source tokens (ids or token strings, e.g. ``"</s>"``) that are not
                features; their share is reported in ``skipped_attr``.
            gen_args: ``model.generate`` arguments when ``target`` is None.

        Returns:
            :class:`Seq2SeqDecompXResult`: ``token_attr`` (targets, source features) holds each
            source token's share of each target token's logit.
        """
        source_ids = self._source(source)
        sequence = self._decoder_sequence(source_ids, target, gen_args)
        decoder_inputs, target_ids = sequence[:-1].view(1, -1), sequence[1:].view(1, -1)
        with torch.no_grad():
            probs = torch.softmax(self._logits(source_ids, decoder_inputs)[0].float(), -1)
        out = self.decompx.decompose_target((source_ids, decoder_inputs), target_ids)
        skip = {self.tokenizer.convert_tokens_to_ids(t) if isinstance(t, str) else int(t) for t in (skip_tokens or ())}
        keep = torch.tensor([int(i) not in skip for i in source_ids[0].tolist()], dtype=torch.bool, device=source_ids.device)
        source_scores = out.source[0].detach().float()  # (targets, source)
        token_attr = source_scores[:, keep]
        prefix = out.target[0].detach().float()  # (targets, targets): column 0 the start token
        n_targets = target_ids.shape[1]
        generated = torch.zeros(n_targets, n_targets, device=prefix.device)
        generated[:, : n_targets - 1] = prefix[:, 1:]
        result = Seq2SeqDecompXResult(
            input_tokens=self.tokenizer.convert_ids_to_tokens(source_ids[0, keep].tolist()),
            output_tokens=self.tokenizer.convert_ids_to_tokens(target_ids[0].tolist()),
            seq_attr=token_attr.sum(0).cpu(),
            token_attr=token_attr.cpu(),
            output_probs=probs.gather(1, target_ids[0].view(-1, 1)).squeeze(1).cpu(),
        )
        result.generated_attr = generated.cpu()
        result.start_attr = prefix[:, 0].cpu()
        result.skipped_attr = (source_scores.sum(1) - token_attr.sum(1)).cpu()
        result.bias = out.bias[0].detach().float().cpu()
        result.logits = out.logits[0].detach().float().cpu()
        result.target_ids = target_ids[0].cpu()
        result.decoder_input_ids = decoder_inputs[0].cpu()
        return result
