"""phieat render half: asset catalogs, dataset specs, planning, Blender workers, shard writing.

Only ``render/blender/`` imports bpy and only ``render/pool/`` imports ray, so catalogs,
specs, plans and shard I/O are plain Python that runs anywhere.
"""

import logging

logger = logging.getLogger("phieat.render")
