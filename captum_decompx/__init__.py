"""captum-decompx: DecompX (Modarressi et al., ACL 2023) as a Captum attribution method."""

from .adapters import Activation, Adapter, LayerPaths, Linear, Norm, register_adapter, supported_model_types
from .attribution import DecompX, DecompXOutput
from .baselines import ALTI, GlobEnc
from .dataset_attribution import attribute_dataset
from .decomposition import DecompXMemoryError
from .evaluation import MethodSpec, evaluate_faithfulness
from .image import patch_heatmap, plot_patch_attribution
from .llm import LLMDecompX
from .visualization import visualization_records, write_html

__all__ = [
    "ALTI",
    "Activation",
    "Adapter",
    "DecompX",
    "DecompXMemoryError",
    "DecompXOutput",
    "GlobEnc",
    "LLMDecompX",
    "LayerPaths",
    "Linear",
    "MethodSpec",
    "Norm",
    "attribute_dataset",
    "evaluate_faithfulness",
    "patch_heatmap",
    "plot_patch_attribution",
    "register_adapter",
    "supported_model_types",
    "visualization_records",
    "write_html",
]

__version__ = "0.1.0"
