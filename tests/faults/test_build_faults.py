"""Damaged build state on resume: a build keeps a published shard only when it can vouch for
its bytes, and renders it again otherwise, naming it.

A sidecar is only a claim anyone can edit; the build's journal (``journal/`` in the version
folder) holds what the build itself published. Every case builds a tiny dataset with a fake
renderer (no Blender, no Ray), damages it, resumes, and compares the result with a clean build
(the fake renders and the tar writer are deterministic, so equal shards are equal bytes).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from fault_fakes import FakeSession
from PIL import Image

from render import storage
from render.build import build
from render.journal import JOURNAL_DIR
from render.spec import load_spec
from render.verify import verify_dataset

SHARDS = [f"shard-{i:06d}.tar" for i in range(3)]


def _jsonl(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _spec(folder: Path, output: str):
    """Six procedural materials, two per shard, two 32 px views each, written to ``output``."""
    folder.mkdir(parents=True, exist_ok=True)
    common = {"licence": "CC0-1.0", "split": "train"}
    _jsonl(
        folder / "materials.jsonl",
        [
            {
                "id": f"mat-{i}", "category": "plastic", "source": "procedural",
                "family": "uniform", "params": {"base_color": [0.6, 0.2, 0.1], "roughness": 0.4},
                "group": f"mat-{i}", **common,
            }
            for i in range(6)
        ],
    )  # fmt: skip
    _jsonl(
        folder / "meshes.jsonl",
        [{"id": "mesh-sphere", "kind": "primitive", "params": {"shape": "uv_sphere"},
          "size_m": 0.3, "group": "mesh-sphere", **common}],
    )  # fmt: skip
    _jsonl(
        folder / "lights.jsonl",
        [{"id": "hdri-city", "kind": "hdri", "params": {}, "group": "hdri-city",
          "path": "bpy:studiolights/world/city.exr", **common}],
    )  # fmt: skip
    (folder / "spec.toml").write_text(
        f'[dataset]\nname = "faults"\noutput = {json.dumps(output)}\nviews = 2\nshard_size = 2\n'
        "[render]\nresolution = 32\nsamples = 2\ndenoise = false\n"
        "[build]\nmax_failure_fraction = 1.0\nmax_retries = 0\n"
    )
    return load_spec(folder / "spec.toml")


def _build(spec, **kw):
    result = build(spec, local=True, session_factory=FakeSession, progress=False, **kw)
    assert result.exit_code == 0, result.summary()
    return result


def _outputs(tmp_path: Path, where: str) -> tuple[str, str]:
    """Output URLs of a clean and a damaged build, both local or both ``memory://``."""
    if where == "local":
        return str(tmp_path / "clean"), str(tmp_path / "damaged")
    run = uuid.uuid4().hex[:8]
    return f"memory://build-faults-{run}/clean", f"memory://build-faults-{run}/damaged"


def _shard_hashes(version_url: str) -> dict[str, str]:
    return {
        name: hashlib.sha256(storage.read_bytes(storage.join(version_url, name))).hexdigest()
        for name in SHARDS
    }


def _modify(version_url: str, name: str) -> bytes:
    """Change one image of a shard so the tar still reads and decodes: the change is only in
    the bytes. Returns the new shard."""
    url = storage.join(version_url, name)
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for member, data in members:
            if member.endswith("view0.jpg"):
                pixels = 255 - np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                out = io.BytesIO()
                Image.fromarray(pixels).save(out, format="JPEG", quality=90)
                data = out.getvalue()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    storage.write_bytes(url, buffer.getvalue())
    return buffer.getvalue()


def _forge_sidecar(version_url: str, name: str, data: bytes) -> None:
    """Rewrite the shard's sidecar so its checksum and size match ``data``."""
    side = storage.join(version_url, name.replace(".tar", ".json"))
    sidecar = storage.read_json(side)
    sidecar.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    storage.write_json(side, sidecar)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_forged_sidecar_does_not_keep_a_modified_shard(tmp_path, caplog, where):
    clean_out, out = _outputs(tmp_path, where)
    clean = _build(_spec(tmp_path / "clean-spec", clean_out))
    spec = _spec(tmp_path / "spec", out)
    first = _build(spec)
    version = first.version_url
    data = _modify(version, "shard-000001.tar")
    _forge_sidecar(version, "shard-000001.tar", data)
    storage.remove(storage.join(version, "index.json"))  # as if the build had stopped early
    caplog.set_level(logging.WARNING, logger="phieat.render")
    resumed = _build(spec)
    assert resumed.rendered == ["shard-000001.tar"]
    assert resumed.skipped == ["shard-000000.tar", "shard-000002.tar"]
    assert "shard-000001.tar will be rendered again" in caplog.text
    assert "sidecar sha256" in caplog.text and "recorded" in caplog.text
    report = verify_dataset(out)
    assert report.ok, report.summary()
    assert _shard_hashes(version) == _shard_hashes(clean.version_url)
    index, clean_index = storage.read_json(resumed.index_url), storage.read_json(clean.index_url)
    assert index["shards"] == clean_index["shards"]


def test_forged_sidecar_is_caught_without_rehashing_too(tmp_path):
    """``--trust-sidecars`` skips re-hashing; a sidecar that disagrees with the journal still
    costs nothing to catch."""
    spec = _spec(tmp_path / "spec", str(tmp_path / "out"))
    version = _build(spec).version_url
    _forge_sidecar(version, "shard-000002.tar", _modify(version, "shard-000002.tar"))
    assert _build(spec, trust_sidecars=True).rendered == ["shard-000002.tar"]
    assert verify_dataset(version).ok


def test_version_folder_without_a_journal_rehashes_against_its_sidecars(tmp_path, caplog):
    """A version folder written before the journal: each shard is hashed against its sidecar
    (a modified shard with its old sidecar is rendered again), and the shards that pass are
    recorded, so the next resume checks them against the journal."""
    clean = _build(_spec(tmp_path / "clean-spec", str(tmp_path / "clean")))
    spec = _spec(tmp_path / "spec", str(tmp_path / "out"))
    version = Path(_build(spec).version_url)
    for record in (version / JOURNAL_DIR).iterdir():
        record.unlink()
    (version / JOURNAL_DIR).rmdir()
    _modify(str(version), "shard-000000.tar")
    (version / "index.json").unlink()
    caplog.set_level(logging.INFO, logger="phieat.render")
    resumed = _build(spec)
    assert resumed.rendered == ["shard-000000.tar"]
    assert "checksum differs from sidecar" in caplog.text
    assert "shard-000001.tar: ok (not in the build journal" in caplog.text
    assert sorted(p.name for p in (version / JOURNAL_DIR).iterdir()) == [
        f"{name}.json" for name in SHARDS
    ]
    assert _shard_hashes(str(version)) == _shard_hashes(clean.version_url)
    # Adopted shards are now vouched for by the journal: a forged sidecar no longer keeps them.
    _forge_sidecar(str(version), "shard-000001.tar", _modify(str(version), "shard-000001.tar"))
    assert _build(spec).rendered == ["shard-000001.tar"]
    assert verify_dataset(str(version)).ok


def test_damaged_journal_record_renders_the_shard_again(tmp_path):
    spec = _spec(tmp_path / "spec", str(tmp_path / "out"))
    version = Path(_build(spec).version_url)
    (version / JOURNAL_DIR / "shard-000002.tar.json").write_text("{not json")
    assert _build(spec).rendered == ["shard-000002.tar"]
    assert verify_dataset(str(version)).ok


def test_a_tar_without_its_sidecar_is_rendered_again(tmp_path):
    """A build stopped between publishing a tar and its sidecar leaves a tar nobody vouches
    for: the next build renders it again and publishes both."""
    clean = _build(_spec(tmp_path / "clean-spec", str(tmp_path / "clean")))
    spec = _spec(tmp_path / "spec", str(tmp_path / "out"))
    version = _build(spec).version_url
    storage.remove(storage.join(version, "shard-000002.json"))
    storage.remove(storage.join(version, "index.json"))
    resumed = _build(spec)
    assert resumed.rendered == ["shard-000002.tar"]
    assert storage.exists(storage.join(version, "shard-000002.json"))
    assert verify_dataset(str(tmp_path / "out")).ok
    assert _shard_hashes(version) == _shard_hashes(clean.version_url)
