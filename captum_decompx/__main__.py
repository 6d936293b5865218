"""``python -m captum_decompx``: the ``captum-decompx`` command (also ``torchrun -m captum_decompx``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
