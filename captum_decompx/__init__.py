"""captum-decompx: DecompX (Modarressi et al., ACL 2023) as a Captum attribution method."""

from .adapters import Activation, Adapter, LayerPaths, Linear, Norm, register_adapter, supported_model_types
from .attribution import DecompX, DecompXOutput
from .decomposition import DecompXMemoryError
from .image import patch_heatmap, plot_patch_attribution
from .llm import LLMDecompX

__all__ = [
    "Activation",
    "Adapter",
    "DecompX",
    "DecompXMemoryError",
    "DecompXOutput",
    "LLMDecompX",
    "LayerPaths",
    "Linear",
    "Norm",
    "patch_heatmap",
    "plot_patch_attribution",
    "register_adapter",
    "supported_model_types",
]

__version__ = "0.1.0"
