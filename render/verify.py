"""Check a finished dataset version against its index, sidecars and the shard schema.

    phieat-render verify out/tiny                 # the latest version of a dataset
    phieat-render verify out/tiny/v-1a2b3c4d5e6f  # one version folder
    phieat-render verify s3://bucket/tiny --quick # sizes and sidecars only, no tar reading

Every shard listed in ``index.json`` must exist with the listed size and sha256 and agree
with its sidecar; every sample must pass ``phieat.schema.validate_sample``, have exactly the
index's number of views, decodable images, and a key that appears once in the dataset. The
dataset card ``README.md`` and ``wids.json`` must list the indexed shards with their sample
counts, and (unless ``--quick``, and when the shards are sound) the card's splits and features
must be what ``render.card`` makes of the shards' members and json.
Every problem is reported, not only the first: a missing or unreadable sidecar is one
problem and the check goes on to the next shard. A shard name in the index that is not a
plain file name (``../x.tar``) is refused, never read.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

from phieat.schema import (
    IMAGE_FORMATS,
    INDEX_NAME,
    SchemaError,
    parse_key,
    sidecar_name,
    validate_index,
    validate_sample,
)
from render import card, storage
from render.build import resolve_dataset_url
from render.writer import file_sha256

EXR_MAGIC = b"\x76\x2f\x31\x01"
# A shard is a plain file name inside its version folder: no folders, no leading dot.
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.tar")


def shard_name_problem(name: object) -> str | None:
    """``None`` if ``name`` (from an ``index.json``) is a plain shard file name inside the
    version folder, else why it is refused (``../x.tar`` would be read outside it)."""
    if isinstance(name, str) and SHARD_NAME.fullmatch(name):
        return None
    return (
        f"shard name {name!r} is not a plain file name like 'shard-000000.tar' inside the "
        "dataset folder: refused (the index may be damaged or forged)"
    )


@dataclass
class VerifyReport:
    """Problems found (empty means the dataset is good) and what was checked."""

    url: str
    shards: int = 0
    samples: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        lines = [
            f"{head}: {self.url}",
            f"checked {self.shards} shards, {self.samples} samples, {self.images} images",
        ]
        lines += [f"  problem: {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... {len(self.problems) - 50} more problems")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def iter_tar_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {member: bytes})`` per sample of a shard, in tar order (streamed)."""
    fs, path = storage.url_to_fs(url)
    with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        key, members = None, {}
        for info in tar:
            if not info.isfile():
                continue
            base, _, member = info.name.partition(".")
            data = tar.extractfile(info).read()
            if base != key:
                if key is not None:
                    yield key, members
                key, members = base, {}
            members[member.lower()] = data
        if key is not None:
            yield key, members


def _decode(name: str, data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """``(None, (width, height))`` if ``data`` decodes as the image its member name says,
    else ``(the reason, None)``; the size is None for EXR (not decoded here)."""
    if name.endswith(".exr"):
        return (None if data[:4] == EXR_MAGIC else "not an OpenEXR file"), None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if name.endswith(".matid.png") and img.mode not in ("I;16", "I", "I;16B"):
                return f"material-index image has mode {img.mode}, expected 16-bit", None
            return None, (int(img.size[0]), int(img.size[1]))
    except Exception as exc:  # noqa: BLE001 - any decoder error is a problem to report
        return f"cannot decode ({type(exc).__name__}: {exc})", None


def _size_problems(meta: dict, sizes: dict[str, tuple[int, int]]) -> list[str]:
    """A view's image, mask and material indices must be one size, the ``resolution`` its
    json records (when it records one). Views of one sample may differ from other samples'
    (selection scenes can render at their own ``[scenes].resolution``)."""
    problems = []
    for v, view in enumerate(meta["views"]):
        got = {m: size for m, size in sizes.items() if m.split(".", 1)[0] == f"view{v}"}
        if len(set(got.values())) > 1:
            listed = ", ".join(f"{m} {w}x{h}" for m, (w, h) in sorted(got.items()))
            problems.append(f"view {v}: its members differ in size ({listed})")
            continue
        res = view.get("resolution") if isinstance(view, dict) else None
        if got and isinstance(res, int) and not isinstance(res, bool):
            (w, h), member = next(iter(got.values())), next(iter(got))
            if (w, h) != (res, res):
                problems.append(f"view {v}: {member} is {w}x{h}, its json says resolution {res}")
    return problems


def verify_dataset(url: str, deep: bool = True) -> VerifyReport:
    """Verify a dataset version (or the latest version under a build output)."""
    try:
        version_url = resolve_dataset_url(url)
    except storage.StorageError as exc:
        return VerifyReport(url, problems=[str(exc)])
    report = VerifyReport(version_url)
    try:
        index = storage.read_json(storage.join(version_url, INDEX_NAME))
        validate_index(index)
    except (storage.StorageError, SchemaError) as exc:
        report.problems.append(f"{INDEX_NAME}: {exc}")
        return report
    views, fmt = index["views_per_sample"], index["image_format"]
    if not index["complete"]:
        report.problems.append(f"{INDEX_NAME} says the build is not complete")
    listed = {s["name"] for s in index["shards"]}
    on_disk = {
        n for n in storage.list_names(version_url) if n.startswith("shard-") and n.endswith(".tar")
    }
    if on_disk - listed:
        report.notes.append(
            f"shards not in the index (a build in progress?): {sorted(on_disk - listed)}"
        )
    keys: dict[str, str] = {}
    summaries: list[card.ShardSummary] = []
    for shard in index["shards"]:
        report.shards += 1
        refused = shard_name_problem(shard["name"])
        if refused:
            report.problems.append(f"{INDEX_NAME}: {refused}")
            continue
        _verify_shard(report, version_url, shard, views, fmt, keys, deep, summaries)
    indexed = sum(s["samples"] for s in index["shards"])
    if deep and report.samples != indexed:
        report.problems.append(f"index lists {indexed} samples, shards hold {report.samples}")
    # The card's features are compared with sound shards only: a damaged one says nothing.
    sound = deep and not report.problems
    if deep and not sound:
        report.notes.append(f"{card.CARD_NAME} features not compared: the shards have problems")
    report.problems += card.check(version_url, index, summaries if sound else None)
    long_names = sum(s.long_names for s in summaries)
    if long_names:
        report.notes.append(
            f"{long_names} samples have tar member names over {card.USTAR_NAME_MAX} characters "
            "(PAX headers): wids cannot read them, webdataset and datasets can"
        )
    if index["failures"]:
        report.notes.append(f"{len(index['failures'])} failed samples recorded in failures.jsonl")
    return report


def _verify_shard(
    report: VerifyReport,
    version_url: str,
    shard: dict,
    views: int,
    fmt: str,
    keys: dict[str, str],
    deep: bool,
    summaries: list[card.ShardSummary],
) -> None:
    name = shard["name"]
    tar_url = storage.join(version_url, name)
    if not storage.exists(tar_url):
        report.problems.append(f"{name}: listed in the index but missing")
        return
    size = storage.size(tar_url)
    if size != shard["bytes"]:
        report.problems.append(f"{name}: {size} bytes, index says {shard['bytes']} (truncated?)")
    sidecar = _read_sidecar(report, version_url, name)
    if sidecar is not None:
        for field_name in ("sha256", "bytes", "plan_hash", "samples"):
            if sidecar.get(field_name) != shard[field_name]:
                report.problems.append(
                    f"{name}: sidecar {field_name} {sidecar.get(field_name)!r} differs from the "
                    f"index ({shard[field_name]!r})"
                )
    if not deep:
        return
    digest = file_sha256(tar_url)
    if digest != shard["sha256"]:
        report.problems.append(f"{name}: sha256 {digest[:16]}... differs from the index (corrupt)")
    count = 0
    ext = IMAGE_FORMATS[fmt]
    summary = card.ShardSummary(name, bytes=size)
    try:
        for key, members in iter_tar_samples(tar_url):
            count += 1
            meta = _verify_sample(report, name, key, members, views, fmt, ext, keys)
            summary.add(list(members), meta, key)
    except (tarfile.TarError, EOFError, OSError) as exc:
        report.problems.append(f"{name}: cannot read the tar ({exc}): truncated or corrupt")
        return
    summaries.append(summary)
    report.samples += count
    if count != shard["samples"]:
        report.problems.append(f"{name}: holds {count} samples, index says {shard['samples']}")


def _read_sidecar(report: VerifyReport, version_url: str, name: str) -> dict | None:
    """The shard's sidecar, or ``None`` after recording why it cannot be used (verify goes on
    to the next shard: every damaged sidecar is reported, not only the first)."""
    side = sidecar_name(name)
    side_url = storage.join(version_url, side)
    if not storage.exists(side_url):
        report.problems.append(f"{name}: sidecar {side} is missing")
        return None
    try:
        sidecar = storage.read_json(side_url)
    except storage.StorageError as exc:
        report.problems.append(f"{name}: sidecar {side} cannot be read: {exc}")
        return None
    if not isinstance(sidecar, dict):
        report.problems.append(f"{name}: sidecar {side} is not a JSON object")
        return None
    return sidecar


def _verify_sample(
    report: VerifyReport,
    shard: str,
    key: str,
    members: dict[str, bytes],
    views: int,
    fmt: str,
    ext: str,
    keys: dict[str, str],
) -> dict | None:
    """Check one sample; returns its decoded json, or ``None`` when it breaks the schema."""
    where = f"{shard}: {key}"
    if key in keys:
        report.problems.append(f"{where}: key also in {keys[key]} (duplicate sample)")
    keys[key] = shard
    try:
        parse_key(key)
        meta = validate_sample({"__key__": key, **members}, image_format=fmt)
    except SchemaError as exc:
        report.problems.append(f"{where}: {exc}")
        return None
    except UnicodeDecodeError as exc:  # damaged bytes in the json member
        report.problems.append(f"{where}.json: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None
    if len(meta["views"]) != views:
        report.problems.append(f"{where}: {len(meta['views'])} views, the index says {views}")
    sizes: dict[str, tuple[int, int]] = {}
    for member, data in sorted(members.items()):
        if member == "json":
            continue
        if member.endswith(f".{ext}") or member.endswith(".png"):
            if member.startswith("view") and member.count(".") == 1:
                report.images += 1
            reason, size = _decode(member, data)
            if reason:
                report.problems.append(f"{where}.{member}: {reason}")
            elif size is not None and member.startswith("view"):
                sizes[member] = size
    report.problems += [f"{where}: {p}" for p in _size_problems(meta, sizes)]
    return dict(meta)
