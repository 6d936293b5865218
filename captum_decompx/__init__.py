"""captum-decompx: DecompX (Modarressi et al., ACL 2023) as a Captum attribution method.

The public names load their modules on first use (PEP 562), so that ``import captum_decompx`` and
the command line's ``--help`` do not load torch, transformers or captum.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapters import (
        Activation,
        Adapter,
        EncoderStack,
        LayerPaths,
        Linear,
        Norm,
        UnsupportedTaskError,
        register_adapter,
        supported_model_types,
    )
    from .attribution import DecompX, DecompXOutput
    from .baselines import ALTI, GlobEnc
    from .components import Approximation, BiasRule, register_approximation, register_bias_rule
    from .core.forward_contract import cosine_similarity_frozen_norm
    from .core.memory import DecompXMemoryError
    from .evaluation import MethodSpec, evaluate_faithfulness
    from .interaction import ImageTextInteraction, image_text_interaction
    from .llm import LLMDecompX
    from .runs.attribute import attribute_dataset
    from .seq2seq import Seq2SeqDecompX
    from .visualization import visualization_records, write_html, write_records_html
    from .visualization.image import captum_image_inputs, patch_heatmap, pixel_attributions, plot_patch_attribution

#: Public name -> the submodule that defines it (imported when the name is first used).
_EXPORTS: dict[str, str] = {
    "ALTI": "baselines",
    "Activation": "adapters",
    "Adapter": "adapters",
    "Approximation": "components",
    "attribute_dataset": "runs.attribute",
    "BiasRule": "components",
    "DecompX": "attribution",
    "DecompXMemoryError": "core.memory",
    "DecompXOutput": "attribution",
    "EncoderStack": "adapters",
    "GlobEnc": "baselines",
    "LLMDecompX": "llm",
    "LayerPaths": "adapters",
    "Linear": "adapters",
    "MethodSpec": "evaluation",
    "Norm": "adapters",
    "Seq2SeqDecompX": "seq2seq",
    "evaluate_faithfulness": "evaluation",
    "captum_image_inputs": "visualization.image",
    "ImageTextInteraction": "interaction",
    "image_text_interaction": "interaction",
    "patch_heatmap": "visualization.image",
    "pixel_attributions": "visualization.image",
    "plot_patch_attribution": "visualization.image",
    "register_adapter": "adapters",
    "register_approximation": "components",
    "register_bias_rule": "components",
    "supported_model_types": "adapters",
    "UnsupportedTaskError": "adapters",
    "cosine_similarity_frozen_norm": "core.forward_contract",
    "visualization_records": "visualization",
    "write_html": "visualization",
    "write_records_html": "visualization",
}

__all__ = [
    "ALTI",
    "Activation",
    "Adapter",
    "Approximation",
    "BiasRule",
    "DecompX",
    "DecompXMemoryError",
    "DecompXOutput",
    "EncoderStack",
    "GlobEnc",
    "ImageTextInteraction",
    "LLMDecompX",
    "LayerPaths",
    "Linear",
    "MethodSpec",
    "Norm",
    "Seq2SeqDecompX",
    "attribute_dataset",
    "UnsupportedTaskError",
    "cosine_similarity_frozen_norm",
    "evaluate_faithfulness",
    "captum_image_inputs",
    "image_text_interaction",
    "patch_heatmap",
    "pixel_attributions",
    "plot_patch_attribution",
    "register_adapter",
    "register_approximation",
    "register_bias_rule",
    "supported_model_types",
    "visualization_records",
    "write_html",
    "write_records_html",
]

try:  # the version is written once, in pyproject.toml; the installed package's metadata carries it
    __version__ = version("captum-decompx")
except PackageNotFoundError:  # imported from a folder that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
