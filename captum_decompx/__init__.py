"""captum-decompx: DecompX (Modarressi et al., ACL 2023) as a Captum attribution method."""

from .adapters import (
    Activation,
    Adapter,
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
from .decomposition import DecompXMemoryError
from .evaluation import MethodSpec, evaluate_faithfulness
from .forward_contract import cosine_similarity_frozen_norm
from .image import patch_heatmap, plot_patch_attribution
from .llm import LLMDecompX
from .visualization import visualization_records, write_html

__all__ = [
    "ALTI",
    "Activation",
    "Adapter",
    "Approximation",
    "BiasRule",
    "DecompX",
    "DecompXMemoryError",
    "DecompXOutput",
    "GlobEnc",
    "LLMDecompX",
    "LayerPaths",
    "Linear",
    "MethodSpec",
    "Norm",
    "UnsupportedTaskError",
    "cosine_similarity_frozen_norm",
    "evaluate_faithfulness",
    "patch_heatmap",
    "plot_patch_attribution",
    "register_adapter",
    "register_approximation",
    "register_bias_rule",
    "supported_model_types",
    "visualization_records",
    "write_html",
]

__version__ = "0.1.0"
