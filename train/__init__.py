"""phieat train half: streaming shard loader, physics-augmented DINO objective, evaluation.

Never imports bpy or ray; reads shards through the contract in ``phieat.schema``.
"""

import logging

logger = logging.getLogger("phieat.train")
