"""Which shards of a dataset version are published and current, and the build's journal.

The planning side of a build (``render.build`` orchestrates): the stored plan generations
(``load_snapshots``), the materials published shards recorded as failed
(``failed_materials``), and for each planned shard whether it is published, unchanged and
kept, or must be rendered (``published_sidecar``, ``split_published``). A sidecar is only a
claim; the build's journal (``journal/``, one small record per shard the build published,
``record_published``) is what a kept shard must agree with.
"""

from __future__ import annotations

import logging
import time

from phieat.schema import sidecar_name
from render import storage
from render.plan import SNAPSHOT_DIR, ShardPlan
from render.writer import file_sha256

logger = logging.getLogger("phieat.render")

# The build's own record of what it published: one small JSON file per shard, written by the
# process holding the lock (never by a worker) and read only by later builds. Readers of the
# dataset (verify, the trainer) never look here.
JOURNAL_DIR = "journal"
JOURNAL_FIELDS = ("sha256", "bytes", "plan_hash")
# ``published_sidecar``'s reason for a shard it kept after checking it against its sidecar
# alone, because the journal has no record of it.
UNRECORDED = "ok (not in the build journal: checked against its sidecar)"


def load_snapshots(version_url: str) -> list[dict]:
    """The stored plan generations of a dataset version, in order."""
    folder = storage.join(version_url, SNAPSHOT_DIR)
    names = [n for n in storage.list_names(folder) if n.startswith("gen-") and n.endswith(".json")]
    return [storage.read_json(storage.join(folder, n)) for n in sorted(names)]


def failed_materials(version_url: str) -> set[str]:
    """Material IDs that published shards of a version recorded as failed (from sidecars)."""
    failed: set[str] = set()
    for name in storage.list_names(version_url):
        if name.startswith("shard-") and name.endswith(".json"):
            try:
                sidecar = storage.read_json(storage.join(version_url, name))
            except storage.StorageError:
                continue
            failed.update(f["material_id"] for f in sidecar.get("failures", []))
    return failed


def journal_url(version_url: str, shard_name: str) -> str:
    """Where the build journal keeps its record of ``shard_name``."""
    return storage.join(version_url, JOURNAL_DIR, f"{shard_name}.json")


def record_published(version_url: str, name: str, sidecar: dict, how: str = "rendered") -> None:
    """Note in the build journal the shard ``name`` a build published (``how="rendered"``)
    or found published and checked byte by byte against its sidecar (``"adopted"``)."""
    record = {field: sidecar[field] for field in JOURNAL_FIELDS}
    record.update(shard=name, how=how, recorded=time.time())
    storage.write_json(journal_url(version_url, name), record)


def _journal_record(version_url: str, shard_name: str) -> tuple[dict | None, str]:
    """``(record, "")``, ``(None, "")`` when the journal has none, or ``(None, why)`` when the
    record is damaged (then nothing about the shard can be trusted)."""
    url = journal_url(version_url, shard_name)
    if not storage.exists(url):
        return None, ""
    try:
        record = storage.read_json(url)
    except storage.StorageError as exc:
        return None, f"build journal record unreadable ({exc})"
    if not isinstance(record, dict) or any(f not in record for f in JOURNAL_FIELDS):
        return None, f"build journal record {url} is damaged"
    return record, ""


def published_sidecar(
    version_url: str, shard: ShardPlan, deep: bool = True
) -> tuple[dict | None, str]:
    """The shard's sidecar if the shard is published and current, else ``(None, why)``.

    A sidecar is only a claim: anyone can rewrite it to match a changed shard. The build's
    journal holds what the build itself published, so a shard the journal knows is kept only
    when its sidecar agrees with the record (sha256, bytes, plan hash) and its bytes do too.
    A shard the journal does not know (a version folder written before the journal existed,
    or a shard a worker published just before its build stopped) is checked against its
    sidecar alone and reported with ``why == UNRECORDED``.

    ``deep`` re-hashes the tar: every kept shard is read once, in full (a few hundred MB
    take about a second from a local disk; from an object store they are downloaded).
    Without it only the size is compared (``--trust-sidecars``).
    """
    tar_url = storage.join(version_url, shard.name)
    side_url = storage.join(version_url, sidecar_name(shard.name))
    if not storage.exists(side_url):
        return None, "missing"
    try:
        sidecar = storage.read_json(side_url)
    except storage.StorageError as exc:
        return None, f"unreadable sidecar ({exc})"
    if not isinstance(sidecar, dict):
        return None, "unreadable sidecar (not a JSON object)"
    if sidecar.get("plan_hash") != shard.plan_hash:
        return None, "stale (plan hash changed)"
    record, damaged = _journal_record(version_url, shard.name)
    if damaged:
        return None, damaged
    if record is not None:
        for name in JOURNAL_FIELDS:
            if sidecar.get(name) != record[name]:
                return None, (
                    f"sidecar {name} {sidecar.get(name)!r} differs from {record[name]!r}, "
                    "which this build recorded when it published the shard (sidecar edited?)"
                )
    if not storage.exists(tar_url):
        return None, "missing tar"
    if storage.size(tar_url) != sidecar.get("bytes"):
        return None, "corrupt (size differs from sidecar)"
    if deep and file_sha256(tar_url) != sidecar.get("sha256"):
        return None, "corrupt (checksum differs from sidecar)"
    return sidecar, "ok" if record is not None else UNRECORDED


def split_published(
    version_url: str, shards: list[ShardPlan], trust_sidecars: bool
) -> tuple[dict[str, dict], list[ShardPlan]]:
    """``(sidecars, todo)``: the sidecars of the shards published and kept (by name, in plan
    order) and the shards to render. A kept shard the journal did not know is recorded in
    it, its bytes having just been hashed (unless ``trust_sidecars``)."""
    sidecars: dict[str, dict] = {}
    todo: list[ShardPlan] = []
    for shard in shards:
        sidecar, why = published_sidecar(version_url, shard, deep=not trust_sidecars)
        if sidecar is None:
            if why != "missing":
                logger.warning("%s will be rendered again: %s", shard.name, why)
            todo.append(shard)
            continue
        if why == UNRECORDED and not trust_sidecars:
            # Its bytes were just hashed against its sidecar: from now on the journal vouches.
            logger.info("%s: %s; recorded in the journal", shard.name, why)
            record_published(version_url, shard.name, sidecar, how="adopted")
        sidecars[shard.name] = sidecar
    return sidecars, todo
