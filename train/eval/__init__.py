"""Evaluation of material features on held-out renders.

``metrics`` holds pure functions (retrieval, k-NN, linear probe, material selection,
invariance); ``data`` reads an eval dataset and checks it against a training index for
leakage; ``baselines`` and ``features`` turn images into CLS and patch features; ``report``
and ``cli`` (the ``phieat-eval`` command) run everything and write a readable report.
"""

import logging

logger = logging.getLogger("phieat.train")
