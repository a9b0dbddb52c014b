"""Evaluation of material features on held-out renders.

``metrics`` holds pure functions (retrieval, k-NN, linear probe, material selection,
invariance), one module per family; ``data`` reads an eval dataset and checks it against a
training index for leakage; ``extractor`` defines what every model becomes (images in,
``Features`` out), ``baselines`` and ``features`` build those extractors; ``protocol`` runs
every metric on one extractor; ``results``, ``tables``, ``comparisons``, ``figures`` and
``report`` turn the saved results into a readable report; ``cli`` is the ``phieat-eval``
command.
"""

import logging

logger = logging.getLogger("phieat.train")
