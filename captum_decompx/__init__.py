"""captum-decompx: DecompX (Modarressi et al., ACL 2023) as a Captum attribution method."""

from .adapters import Activation, Adapter, LayerPaths, Linear, register_adapter, supported_model_types
from .attribution import DecompX, DecompXOutput
from .decomposition import DecompXMemoryError

__all__ = [
    "Activation",
    "Adapter",
    "DecompX",
    "DecompXMemoryError",
    "DecompXOutput",
    "LayerPaths",
    "Linear",
    "register_adapter",
    "supported_model_types",
]

__version__ = "0.1.0"
