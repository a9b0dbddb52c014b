"""Render one shard and publish it: tar writer, per-material retries, atomic publish, sidecar.

``render_shard(session, shard, version_url)`` is what a worker runs for one task: it renders
every view of the shard's plan with a Blender session (in an order that keeps the same light
and mesh loaded for consecutive views), retries a failing material a bounded number of
times, leaves out materials that still fail (returned as failure records with the reason),
writes the tar to a local temporary file with a fixed mtime, and publishes it atomically at
``<version_url>/shard-NNNNNN.tar`` followed by its sidecar ``shard-NNNNNN.json`` (sha256,
sample count, plan hash). A shard counts as published only once its sidecar exists.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from phieat.schema import (
    HARD_NEGATIVE_GROUP,
    MASK_THRESHOLD,
    SCHEMA_VERSION,
    canonical_json,
    mask_member,
    matid_member,
    object_crop_meta,
    sidecar_name,
    validate_meta,
    view_member,
)
from render import storage
from render.errors import MaterialError, RenderError

logger = logging.getLogger("phieat.render")

SHARD_MTIME = 0  # fixed member mtime: equal members give byte-identical tars


class Session(Protocol):
    """What ``render_shard`` needs from a renderer (``render.blender.session.BlenderSession``)."""

    blender_version: str

    def render_view(self, job: dict) -> Any: ...

    def reset(self) -> None: ...

    def rss_mb(self) -> float: ...


class ShardWriter:
    """Write tar members into a local temporary file; ``publish`` renames/uploads it."""

    def __init__(self, scratch_dir: str | Path | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="phieat-shard-", suffix=".tar.part", dir=scratch_dir)
        self.path = Path(path)
        self._fh = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.PAX_FORMAT)
        self.names: list[str] = []

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = SHARD_MTIME
        info.mode = 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))
        self.names.append(name)

    def add_sample(self, key: str, members: Iterable[tuple[str, bytes]]) -> None:
        for member, data in members:
            self.add(f"{key}.{member}", data)

    def close(self) -> tuple[str, int]:
        """Finish the tar; returns ``(sha256, bytes)`` of the file."""
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest(), self.path.stat().st_size

    def publish(self, url: str) -> None:
        storage.put_file(self.path, url)

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)


def file_sha256(url: str) -> str:
    """sha256 of a published file, streamed."""
    fs, path = storage.url_to_fs(url)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def render_order(samples: list[dict]) -> list[tuple[int, int]]:
    """``(sample, view)`` pairs sorted so consecutive views share the light, then the mesh."""
    pairs = [(i, v) for i, s in enumerate(samples) for v in range(len(s["views"]))]

    def sort_key(pair: tuple[int, int]) -> tuple[str, str, str, int]:
        job = samples[pair[0]]["views"][pair[1]]
        return (job["light"]["id"], job["mesh"]["id"], job["key"], job["view"])

    return sorted(pairs, key=sort_key)


def material_meta(entry: dict) -> dict[str, Any]:
    """The ``material`` record of a sample's json: the catalog entry, with ``params`` always set."""
    meta = dict(entry)
    meta.setdefault("params", {})
    return meta


def view_meta(view: Any, with_mask: bool) -> dict[str, Any]:
    """A view's record in the sample json: the session's metadata and, when the mask pass was
    rendered, the crop metadata computed from the mask (``phieat.schema.object_crop_meta``),
    so that trainers place crops on the object without decoding the mask."""
    meta = dict(view.meta)
    if with_mask and view.mask is not None:
        mask = np.asarray(Image.open(io.BytesIO(view.mask)).convert("L")) > MASK_THRESHOLD
        meta.update(object_crop_meta(mask))
    return meta


def _render_with_retries(
    session: Session, job: dict, max_retries: int
) -> tuple[Any, str | None, int]:
    reason = None
    for attempt in range(1, max_retries + 2):
        try:
            return session.render_view(job), None, attempt
        except (MaterialError, RenderError) as exc:
            reason = f"{type(exc).__name__}: {exc.reason}"
            logger.warning(
                "%s view %d attempt %d failed: %s", job["key"], job["view"], attempt, reason
            )
            session.reset()
    return None, reason, max_retries + 1


def render_shard(
    session: Session,
    shard: dict,
    version_url: str,
    *,
    max_retries: int = 2,
    scratch_dir: str | Path | None = None,
    on_view: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Render, write and publish one shard plan (``ShardPlan.to_dict()``); returns its sidecar."""
    started = time.perf_counter()
    samples = shard["samples"]
    fmt = samples[0]["views"][0]["render"]["image_format"] if samples else "jpg"
    passes = samples[0]["views"][0]["render"]["passes"] if samples else []
    base_dirs = shard.get("base_dirs") or {}
    if base_dirs and hasattr(session, "set_base_dirs"):
        # Catalog-relative paths (texture maps, mesh files, HDRIs) resolve against these.
        session.set_base_dirs(**{f"{kind}_dir": Path(path) for kind, path in base_dirs.items()})
    results: dict[tuple[int, int], Any] = {}
    failed: dict[int, dict[str, Any]] = {}
    engine_s = 0.0
    try:
        for i, v in render_order(samples):
            if i in failed:
                continue
            job = samples[i]["views"][v]
            view, reason, attempts = _render_with_retries(session, job, max_retries)
            if view is None:
                failed[i] = {
                    "key": job["key"],
                    "material_id": job["material"]["id"],
                    "view": v,
                    "attempts": attempts,
                    "reason": reason,
                    "shard": shard["name"],
                }
                continue
            results[(i, v)] = view
            engine_s += float(view.meta.get("engine_time_s", 0.0))
            if on_view is not None:
                on_view(1)

        writer = ShardWriter(scratch_dir)
        try:
            keys = []
            for i, sample in enumerate(samples):
                if i in failed:
                    continue
                views = [results[(i, v)] for v in range(len(sample["views"]))]
                meta = {
                    "schema_version": SCHEMA_VERSION,
                    "key": sample["key"],
                    "material": material_meta(sample["material"]),
                    "views": [view_meta(view, "mask" in passes) for view in views],
                    "blender_version": session.blender_version,
                    "catalog_snapshot": shard["catalog_snapshot"],
                    "plan_hash": shard["plan_hash"],
                }
                if sample.get("scene_materials"):
                    # A selection scene: every material in it, in material-index order.
                    meta["scene_materials"] = [m["id"] for m in sample["scene_materials"]]
                if sample.get(HARD_NEGATIVE_GROUP):
                    # Its group: other materials under this sample's exact meshes, lights, cameras.
                    meta[HARD_NEGATIVE_GROUP] = sample[HARD_NEGATIVE_GROUP]
                validate_meta(meta, sample["key"])
                members = []
                for v, view in enumerate(views):
                    members.append((view_member(v, fmt), view.image))
                    if "mask" in passes and view.mask is not None:
                        members.append((mask_member(v), view.mask))
                    if "matid" in passes and view.matid is not None:
                        members.append((matid_member(v), view.matid))
                members.append(("json", (canonical_json(meta) + "\n").encode("utf-8")))
                writer.add_sample(sample["key"], members)
                keys.append(sample["key"])
            sha256, nbytes = writer.close()
            writer.publish(storage.join(version_url, shard["name"]))
        finally:
            writer.discard()
    finally:
        session.reset()
    sidecar = {
        "schema_version": SCHEMA_VERSION,
        "shard": shard["name"],
        "sha256": sha256,
        "bytes": nbytes,
        "samples": len(keys),
        "images": len(keys) * (len(samples[0]["views"]) if samples else 0),
        "keys": keys,
        "plan_hash": shard["plan_hash"],
        "failures": [failed[i] for i in sorted(failed)],
        "blender_version": session.blender_version,
        "render_s": round(time.perf_counter() - started, 3),
        "engine_s": round(engine_s, 3),
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},
        "created": time.time(),
    }
    storage.write_json(storage.join(version_url, sidecar_name(shard["name"])), sidecar)
    return sidecar
