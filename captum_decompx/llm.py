"""DecompX for causal language models: which prompt tokens produced each next token.

:class:`LLMDecompX` mirrors Captum's ``LLMGradientAttribution`` (whose constructor accepts only
Captum's own gradient methods) and returns Captum's public ``LLMAttributionResult``, so that
``plot_token_attr`` and ``plot_seq_attr`` work as for Captum's LLM methods. The attribution of a
generated token is its next-token *logit* decomposed over the tokens before it (DecompX explains
logits, not log-probabilities).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from captum.attr import LLMAttributionResult
from torch import Tensor, nn

from .attribution import DecompX

DEFAULT_GEN_ARGS = {"max_new_tokens": 16, "do_sample": False}


class LLMDecompX:
    """Attribute a causal LM's generated tokens to the prompt with DecompX.

    Args:
        model: a Hugging Face causal LM (GPT-2 or the Llama family), in eval mode.
        tokenizer: its tokenizer.
        **options: DecompX options (``include_biases``, ``method``, ``max_memory``, ...);
            ``include_biases=False`` (the fast path) makes long prompts cheap.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, **options: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decompx = DecompX(self._next_token_logits, model=model, **options)

    def _next_token_logits(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits[:, -1, :]

    def _prompt_ids(self, prompt: Union[str, Tensor]) -> Tensor:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("The prompt is empty: give the text the model should continue.")
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        else:
            ids = prompt if prompt.dim() == 2 else prompt.unsqueeze(0)
        if ids.shape[0] != 1:
            raise ValueError(f"LLMDecompX explains one prompt at a time; got a batch of {ids.shape[0]}.")
        return ids.to(self._device())

    def _device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def _target_ids(self, prompt_ids: Tensor, target: Union[None, str, int, Sequence[int], Tensor], gen_args) -> Tensor:
        if target is None:
            args = {**DEFAULT_GEN_ARGS, **(gen_args or {})}
            if getattr(self.tokenizer, "pad_token_id", None) is not None:
                args.setdefault("pad_token_id", self.tokenizer.pad_token_id)
            elif getattr(self.tokenizer, "eos_token_id", None) is not None:
                args.setdefault("pad_token_id", self.tokenizer.eos_token_id)
            with torch.no_grad():
                generated = self.model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), **args)
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

    def attribute(
        self,
        prompt: Union[str, Tensor],
        target: Union[None, str, int, Sequence[int], Tensor] = None,
        gen_args: Optional[dict] = None,
        show_progress: bool = False,
    ) -> LLMAttributionResult:
        """Attribute each target token's logit to the prompt tokens.

        Args:
            prompt: the prompt text, or its ids (seq,) / (1, seq).
            target: the continuation to explain: text, token ids, or one token id; None generates
                it greedily with ``gen_args`` (default ``max_new_tokens=16``).
            gen_args: ``model.generate`` arguments when ``target`` is None.
            show_progress: a progress bar over the target tokens.

        Returns:
            Captum's ``LLMAttributionResult``: ``token_attr`` (targets, prompt tokens) holds each
            prompt token's contribution to each target token's logit, given the prompt and the
            target tokens before it; ``seq_attr`` is its sum over the targets; ``output_probs``
            the model's probability of each target token.
        """
        prompt_ids = self._prompt_ids(prompt)
        target_ids = self._target_ids(prompt_ids, target, gen_args)
        steps = range(target_ids.numel())
        if show_progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="LLMDecompX", unit="token")
        rows, probs = [], []
        context = prompt_ids
        for step in steps:
            token = int(target_ids[step])
            scores = self.decompx.attribute(context, target=token)
            rows.append(scores[0, : prompt_ids.shape[1]])
            with torch.no_grad():
                probs.append(torch.softmax(self._next_token_logits(context).float(), -1)[0, token])
            context = torch.cat([context, target_ids[step : step + 1].view(1, 1)], dim=1)
        token_attr = torch.stack(rows).detach().float().cpu()
        return LLMAttributionResult(
            input_tokens=self.tokenizer.convert_ids_to_tokens(prompt_ids[0].tolist()),
            output_tokens=self.tokenizer.convert_ids_to_tokens(target_ids.tolist()),
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            output_probs=torch.stack(probs).detach().float().cpu(),
        )
