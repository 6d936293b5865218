"""DecompX for causal language models: which prompt tokens produced each next token.

:class:`LLMDecompX` follows Captum's LLM API (``LLMAttribution`` / ``LLMGradientAttribution``): it
takes a prompt as text, ids, or Captum's ``TextTokenInput`` / ``TextTemplateInput``, a target
continuation (or generates one), and ``skip_tokens``; it returns Captum's ``LLMAttributionResult``
(as :class:`LLMDecompXResult`), so that ``seq_attr``, ``token_attr``, ``plot_token_attr`` and
``plot_seq_attr`` work as for Captum's LLM methods.

The attribution of a generated token is its next-token *logit* decomposed over every token before
it (DecompX explains logits, not log-probabilities). At every step the shares add up exactly::

    token_attr[t].sum() + skipped_attr[t] + generated_attr[t].sum() + bias[t] == logits[t]

``token_attr`` holds the prompt's interpretable features (tokens, or a template's values),
``skipped_attr`` the prompt tokens that are not features (``skip_tokens``, a template's fixed
text), ``generated_attr[t, s]`` the share of the earlier generated token ``s < t``, and ``bias``
the biases' share (zero when the biases are decomposed).

A whole target costs about one step: in a causal model the last layer's row at position ``p``
depends on the tokens up to ``p`` only, so one decomposition of the prompt and the target holds
every step's (:func:`captum_decompx.core.rows.decompose_rows` on the exact path,
:func:`~captum_decompx.core.rows.fast_rows` after one frozen forward pass on the fast path).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union, cast

import torch
from captum.attr import LLMAttributionResult, TextTemplateInput, TextTokenInput
from torch import Tensor, nn

from .adapters import task_of
from .attribution import DecompX
from .components.head import head_step_kind

DEFAULT_GEN_ARGS = {"max_new_tokens": 16, "do_sample": False}

PromptType = Union[str, Tensor, TextTokenInput, TextTemplateInput]
LLMTargetType = Union[None, str, int, Sequence[int], Tensor]

_SENTINEL_OPEN, _SENTINEL_CLOSE = "\ue000", "\ue001"


class LLMDecompXResult(LLMAttributionResult):
    """Captum's ``LLMAttributionResult`` with every share of each step's logit.

    Attributes (besides Captum's ``seq_attr``, ``token_attr``, ``input_tokens``, ``output_tokens``,
    ``output_probs``):
        generated_attr: (targets, targets), ``[t, s]`` the share of generated token ``s`` in the
            logit of generated token ``t`` (zero for ``s >= t``).
        skipped_attr: (targets,), the share of the prompt tokens that are not interpretable
            features (skipped tokens, a template's fixed text).
        bias: (targets,), the biases' share of each logit (zero when the biases are decomposed).
        logits: (targets,), each target token's next-token logit. For a model that soft-caps its
            logits (Gemma 2/3's ``final_logit_softcapping``), the logit ``z`` before the cap, which
            is the value explained (with a warning); ``output_probs`` stay the model's own.
        target_ids: (targets,), the target tokens' ids.
    """

    generated_attr: Tensor
    skipped_attr: Tensor
    bias: Tensor
    logits: Tensor
    target_ids: Tensor


class _Prompt:
    """A prompt's ids (1, seq) and its interpretable features: ``features`` (seq, n_features) 0/1."""

    def __init__(self, ids: Tensor, features: Tensor, names: list[str], inp: Any = None) -> None:
        self.ids = ids
        self.features = features
        self.names = names
        self.inp = inp


class LLMDecompX:
    """Attribute a causal LM's generated tokens to the prompt with DecompX.

    Args:
        model: a Hugging Face causal LM (GPT-2 or the Llama family), in eval mode.
        tokenizer: its tokenizer (a fast tokenizer for ``TextTemplateInput`` prompts).
        one_pass: explain every target token from one pass over the prompt and the target (one
            exact decomposition, or one frozen forward pass and one batched backward pass); False
            explains the tokens one :meth:`DecompX.attribute` call each on the growing context.
            Both give the same results; models whose steps cannot be read from one pass (a head
            with its own nonlinearity, soft-capped logits, attention that is not causal) are
            explained step by step either way.
        **options: DecompX options (``include_biases``, ``algorithm``, ``max_memory``, ...);
            ``include_biases=False`` (the fast algorithm) makes long prompts cheap. The exact
            decomposition of the final sequence stays under ``max_memory`` (in chunks of rows) or
            is refused with :class:`~captum_decompx.DecompXMemoryError` before any work.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, one_pass: bool = True, **options: Any) -> None:
        if not isinstance(one_pass, bool):
            raise ValueError(f"one_pass must be True or False, got {one_pass!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.one_pass = one_pass
        self.decompx = DecompX(self._next_token_logits, model=model, **options)
        if self.decompx.adapter.encoder is not None:
            raise ValueError(
                f"LLMDecompX explains causal language models; {type(model).__name__} is an encoder-decoder. Use "
                "captum_decompx.Seq2SeqDecompX(model, tokenizer), which explains its target over the source."
            )

    def _next_token_logits(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits[:, -1, :]

    def _device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    # ----------------------------------------------------------------------------------------
    # Prompts

    def _skip_ids(self, skip_tokens: Union[None, Sequence[int], Sequence[str]]) -> set[int]:
        if not skip_tokens:
            return set()
        ids = [self.tokenizer.convert_tokens_to_ids(t) if isinstance(t, str) else int(t) for t in skip_tokens]
        return set(ids)

    def _prompt(self, prompt: PromptType, skip_tokens: Union[None, Sequence[int], Sequence[str]]) -> _Prompt:
        skip = self._skip_ids(skip_tokens)
        if isinstance(prompt, TextTemplateInput):
            return self._template_prompt(prompt, skip)
        if isinstance(prompt, TextTokenInput):
            ids = prompt.inp_tensor
            if prompt.itp_mask is not None:
                keep = prompt.itp_mask[0].bool().clone()
            else:
                keep = torch.ones(ids.shape[1], dtype=torch.bool)
        elif isinstance(prompt, str):
            if not prompt:
                raise ValueError("The prompt is empty: give the text the model should continue.")
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
            keep = torch.ones(ids.shape[1], dtype=torch.bool)
        elif isinstance(prompt, Tensor):
            ids = prompt if prompt.dim() == 2 else prompt.unsqueeze(0)
            keep = torch.ones(ids.shape[1], dtype=torch.bool)
        else:
            raise TypeError(
                f"The prompt must be text, token ids, a TextTokenInput or a TextTemplateInput; got {type(prompt).__name__}."
            )
        if ids.shape[0] != 1:
            raise ValueError(f"LLMDecompX explains one prompt at a time; got a batch of {ids.shape[0]}.")
        if ids.shape[1] == 0:
            raise ValueError("The prompt is empty: give the text the model should continue.")
        keep &= torch.tensor([int(i) not in skip for i in ids[0].tolist()], dtype=torch.bool)
        positions = keep.nonzero().flatten()
        features = torch.zeros(ids.shape[1], positions.numel())
        features[positions, torch.arange(positions.numel())] = 1.0
        names = self.tokenizer.convert_ids_to_tokens(ids[0, positions].tolist())
        return _Prompt(ids.to(self._device()), features, names, prompt if not isinstance(prompt, (str, Tensor)) else None)

    def _template_prompt(self, prompt: TextTemplateInput, skip: set[int]) -> _Prompt:
        text, spans = _template_spans(prompt)
        try:
            encoded = self.tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError) as error:
            raise TypeError(
                "A TextTemplateInput prompt needs a fast tokenizer (one that returns offset mappings) "
                f"to find the tokens of each value: {error}"
            ) from None
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"][0].tolist()
        groups = list(range(len(spans))) if prompt.mask is None else list(prompt.formatted_mask)
        features = torch.zeros(ids.shape[1], prompt.n_itp_features)
        for position, (start, end) in enumerate(offsets):
            if end <= start or int(ids[0, position]) in skip:
                continue
            for value, (value_start, value_end) in enumerate(spans):
                if start < value_end and value_start < end:
                    features[position, groups[value]] = 1.0
                    break
        names = [" ".join(v for v, g in zip(prompt.values, groups) if g == feature) for feature in range(prompt.n_itp_features)]
        return _Prompt(ids.to(self._device()), features, names, prompt)

    # ----------------------------------------------------------------------------------------
    # Targets

    def _target_ids(self, prompt_ids: Tensor, target: LLMTargetType, gen_args: Optional[dict]) -> Tensor:
        if target is None:
            args = {**DEFAULT_GEN_ARGS, **(gen_args or {})}
            if getattr(self.tokenizer, "pad_token_id", None) is not None:
                args.setdefault("pad_token_id", self.tokenizer.pad_token_id)
            elif getattr(self.tokenizer, "eos_token_id", None) is not None:
                args.setdefault("pad_token_id", self.tokenizer.eos_token_id)
            with torch.no_grad():
                generated = cast(Any, self.model).generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), **args)
            return generated[0, prompt_ids.shape[1] :]
        if isinstance(target, str):
            ids = self.tokenizer(target, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        elif isinstance(target, int):
            ids = torch.tensor([target])
        else:
            ids = torch.as_tensor(target).flatten()
        if ids.numel() == 0:
            raise ValueError("The target is empty: give at least one token to explain.")
        return ids.to(prompt_ids.device)

    # ----------------------------------------------------------------------------------------
    # Attribution

    def attribute(
        self,
        inp: PromptType,
        target: LLMTargetType = None,
        skip_tokens: Union[None, Sequence[int], Sequence[str]] = None,
        gen_args: Optional[dict] = None,
        show_progress: bool = False,
    ) -> LLMDecompXResult:
        """Attribute each target token's logit to the prompt's features and the earlier targets.

        Args:
            inp: the prompt: text, its ids (seq,) / (1, seq), or Captum's ``TextTokenInput``
                (features: its tokens, without its own ``skip_tokens``) or ``TextTemplateInput``
                (features: the template's values, grouped by its ``mask``).
            target: the continuation to explain: text, token ids, or one token id; None generates
                it greedily with ``gen_args`` (default ``max_new_tokens=16``).
            skip_tokens: prompt tokens (ids or token strings, e.g. the BOS token) that are not
                features; their share is reported in ``skipped_attr``.
            gen_args: ``model.generate`` arguments when ``target`` is None.
            show_progress: a progress bar over the target tokens (when they are explained step by
                step; one pass has no steps to count).

        Returns:
            :class:`LLMDecompXResult`: ``token_attr`` (targets, features) holds each prompt
            feature's share of each target token's logit, given the prompt and the target tokens
            before it; ``seq_attr`` is its sum over the targets; ``output_probs`` the model's
            probability of each target token; ``generated_attr``, ``skipped_attr``, ``bias`` and
            ``logits`` complete every row to its logit (module docstring).
        """
        prompt = self._prompt(inp, skip_tokens)
        target_ids = self._target_ids(prompt.ids, target, gen_args)
        steps = self._one_pass(prompt.ids, target_ids) if self.one_pass and self._one_pass_applies() else None
        if steps is None:
            steps = self._step_by_step(prompt.ids, target_ids, show_progress=show_progress)
        n_prompt, n_targets = prompt.ids.shape[1], target_ids.numel()
        features = prompt.features.to(steps.scores.device)
        prompt_scores = steps.scores[:, :n_prompt]  # (targets, prompt)
        token_attr_device = prompt_scores @ features
        skipped = prompt_scores.sum(1) - token_attr_device.sum(1)
        generated = torch.zeros(n_targets, n_targets, device=steps.scores.device)
        for step in range(1, n_targets):
            generated[step, :step] = steps.scores[step, n_prompt : n_prompt + step]
        token_attr = token_attr_device.cpu()
        result = LLMDecompXResult(
            input_tokens=prompt.names,
            output_tokens=self.tokenizer.convert_ids_to_tokens(target_ids.tolist()),
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            output_probs=steps.probs.cpu(),
            inp=prompt.inp,
        )
        result.generated_attr = generated.cpu()
        result.skipped_attr = skipped.cpu()
        result.bias = steps.bias.cpu()
        result.logits = steps.logits.cpu()
        result.target_ids = target_ids.cpu()
        return result

    def _step_by_step(self, prompt_ids: Tensor, target_ids: Tensor, *, show_progress: bool) -> "_Steps":
        """One :meth:`DecompX.attribute` call per target token, on the growing context."""
        n_prompt, n_targets = prompt_ids.shape[1], target_ids.numel()
        steps: Any = range(n_targets)
        if show_progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="LLMDecompX", unit="token")
        scores = torch.zeros(n_targets, n_prompt + n_targets - 1, device=prompt_ids.device)
        bias, logits, probs = [], [], []
        context = prompt_ids
        capped = self.decompx.adapter.logit_softcap is not None
        for step in steps:
            token = int(target_ids[step])
            row, delta = self.decompx.attribute(context, target=token, return_convergence_delta=True)
            scores[step, : n_prompt + step] = row[0].detach().float()
            with torch.no_grad():
                step_logits = self._next_token_logits(context)[0].float()
            bias.append(-delta[0].detach().float())
            if capped:  # the explained value: the logit before the cap (attributions plus bias)
                logits.append(row[0].detach().float().sum() - delta[0].detach().float())
            else:
                logits.append(step_logits[token])
            probs.append(torch.softmax(step_logits, -1)[token])
            context = torch.cat([context, target_ids[step : step + 1].view(1, 1)], dim=1)
        return _Steps(scores, torch.stack(bias), torch.stack(logits), torch.stack(probs))

    def _one_pass_applies(self) -> bool:
        """Whether every step can be read from one pass over the final sequence: a causal LM whose
        head is one linear map read at every position, with no soft-cap on its logits."""
        adapter = self.decompx.adapter
        return (
            task_of(self.model) == "causal LM"
            and adapter.logit_softcap is None
            and len(adapter.head) == 1
            and not any(head_step_kind(step).reads_input for step in adapter.head)
        )

    def _one_pass(self, prompt_ids: Tensor, target_ids: Tensor) -> Optional["_Steps"]:
        """Every step from one pass over the prompt and the targets but the last.

        In a causal model the last layer's row at position ``p`` depends on the tokens ``<= p``
        only, so the rows ``n_prompt - 1 + t`` of one decomposition of the final sequence are the
        decompositions of the steps. Returns None (the caller then explains step by step) when a
        row shares its logit with a token after it: the model is not causal.
        """
        decompx = self.decompx
        n_prompt, n_targets = prompt_ids.shape[1], target_ids.numel()
        context = torch.cat([prompt_ids, target_ids[:-1].view(1, -1)], dim=1)
        positions = torch.arange(n_prompt - 1, n_prompt - 1 + n_targets, device=context.device)
        with decompx._call_modes():
            rows = decompx.strategy.rows(decompx, context, positions, target_ids)
        if rows is None:
            return None
        scores, bias, model_output = rows.scores, rows.bias, rows.model_output
        if model_output is None or model_output.dim() != 3:
            return None
        later = torch.ones_like(scores, dtype=torch.bool).triu(n_prompt)
        if bool((scores[later] != 0).any()):
            return None  # a token after a row's position takes part in it: not a causal model
        all_logits = model_output[0, positions].detach().float()  # (targets, vocab)
        logits = all_logits.gather(1, target_ids.view(-1, 1)).squeeze(1)
        probs = torch.softmax(all_logits, -1).gather(1, target_ids.view(-1, 1)).squeeze(1)
        scores = scores.detach().float()
        bias = logits - scores.sum(1) if bias is None else bias.detach().float()
        return _Steps(scores, bias, logits, probs)


class _Steps:
    """Every step's decomposition: ``scores`` (targets, prompt + targets - 1), row ``t`` the shares
    of the tokens before target ``t`` (zero from there on); ``bias``, ``logits``, ``probs`` (targets,)."""

    def __init__(self, scores: Tensor, bias: Tensor, logits: Tensor, probs: Tensor) -> None:
        self.scores = scores
        self.bias = bias
        self.logits = logits
        self.probs = probs


def _template_spans(prompt: TextTemplateInput) -> tuple[str, list[tuple[int, int]]]:
    """The formatted text of a ``TextTemplateInput`` and the character span of each value.

    The template is formatted once with numbered markers in place of the values, and the markers
    are then replaced by the values, recording where each lands.
    """
    markers = [f"{_SENTINEL_OPEN}{i}{_SENTINEL_CLOSE}" for i in range(len(prompt.values))]
    if prompt.dict_keys:
        marked = prompt.format_fn(**dict(zip(prompt.dict_keys, markers)))
    else:
        marked = prompt.format_fn(*markers)
    text, spans = "", [(0, 0)] * len(markers)
    rest = marked
    while _SENTINEL_OPEN in rest:
        before, _, after = rest.partition(_SENTINEL_OPEN)
        number, _, rest = after.partition(_SENTINEL_CLOSE)
        text += before
        index = int(number)
        spans[index] = (len(text), len(text) + len(prompt.values[index]))
        text += prompt.values[index]
    text += rest
    if text != prompt.to_model_input():
        raise ValueError(
            "The TextTemplateInput's template changes its values (or formats one twice), so the "
            "tokens of each value cannot be found; use a template that inserts each value unchanged "
            "once, e.g. '{} feels {} right now'."
        )
    return text, spans
