"""``python -m skipstep``: the command line (:mod:`skipstep.lab.cli`), the same as the ``skipstep`` command."""

import sys

from .lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
