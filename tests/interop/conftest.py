"""A tiny dataset built once per module with the fake renderer, for the interop tests.

Materials of five procedural families (taken from the shipped catalog, so each family has its
own params keys), one selection scene, masks and 16-bit material indices, three shards:
rendered by the build's own code in well under a second, with the umask set to 022.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POOL_TESTS = ROOT / "tests" / "render" / "pool"
if str(POOL_TESTS) not in sys.path:  # pool_fakes, shared with the pool tests
    sys.path.insert(0, str(POOL_TESTS))

import pool_fakes  # noqa: E402
from interop_data import family_materials, tar_samples  # noqa: E402

from render.build import build  # noqa: E402
from render.spec import load_spec  # noqa: E402


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> Path:
    """The version folder of the tiny dataset (built under umask 022)."""
    base = tmp_path_factory.mktemp("interop")
    pool_fakes.write_catalogs(base / "cat", n_materials=0, extra_materials=family_materials())
    spec = load_spec(
        pool_fakes.write_spec(
            base / "cat",
            str(base / "data"),
            dataset={"views": 2, "shard_size": 2},
            render={"passes": ["mask", "matid"]},
            scenes={"count": 1, "objects": [2, 2]},
        )
    )
    old = os.umask(0o022)
    try:
        result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.summary()
    return Path(result.version_url)


@pytest.fixture(scope="module")
def truth(version: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of the dataset as the tars hold it."""
    out: dict[str, dict[str, bytes]] = {}
    for shard in sorted(version.glob("shard-*.tar")):
        out.update(tar_samples(shard))
    return out
