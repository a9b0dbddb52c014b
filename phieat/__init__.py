"""phieat: the shard contract shared by ``render/`` and ``train/`` (no heavy imports)."""

from phieat.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION"]
__version__ = "0.1.0"
