#!/usr/bin/env python
"""Thin wrapper around ``python -m skipstep.lab.testbeds.train`` (see docs/training.md).

Usage: ``python scripts/train_digits.py {unet,classifier,report,all} [options]``.
"""

import sys
from pathlib import Path

try:
    import skipstep.lab.testbeds.train  # noqa: F401  (installed, or on PYTHONPATH)
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from skipstep.lab.testbeds.train import main

if __name__ == "__main__":
    raise SystemExit(main())
