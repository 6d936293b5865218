"""``python -m captum_decompx``: the ``captum-decompx`` command (also ``torchrun -m captum_decompx``)."""

import os
import sys

from .cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose work, output and process-group teardown are done: leave without
        # the interpreter's own teardown, in which torch.distributed's native threads can still
        # abort the process ("terminate called without an active exception", seen at exit on 2
        # loaded cores) and turn a finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code)
