"""``python -m train`` (what torchrun runs): the same as ``phieat-train``."""

import sys

from train.cli import main

sys.exit(main())
