"""Old home of the DeBERTa-v2, ALBERT and ModernBERT adapters, kept importable; each family now has
its own module (:mod:`.deberta`, :mod:`.albert`, :mod:`.modernbert`)."""

from .albert import ALBERT
from .deberta import deberta_v2
from .modernbert import modernbert

__all__ = ["ALBERT", "deberta_v2", "modernbert"]
