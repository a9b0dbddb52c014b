"""Streaming shard loader: WebDataset tars -> two views per material -> multi-crop batches.

Pipeline (one logical *stream* per rank x data worker), top to bottom:

1. ``resolve_data``: a source is a dataset folder (its ``latest.json`` names the version
   folder), a version folder or an ``index.json`` (local or any fsspec URL), or shards named
   one by one: brace patterns (``shard-{000000..000099}.tar``, expanded in ``pipe:`` commands
   too, as WebDataset does), ``.tar`` paths, ``http(s)://`` and ``pipe:`` (WebDataset
   ``gopen``) or fsspec URLs (``s3://``, ``gs://``, ``memory://``); join several with ``::``.
   Local paths are checked before anything else runs, and a folder without ``index.json``
   is refused unless the shards are named one by one (or ``data.index = ""``).
2. shard order: a fresh permutation every epoch (seed, epoch); stream ``s`` of ``S`` takes
   shards ``s::S``, or, when there are fewer shards than streams, every shard and every
   ``S``-th sample, so no rank ever runs dry; ``resampled`` draws shards with replacement.
   Streams never end (epochs follow each other), so uneven shards cannot hang DDP: the
   trainer runs a fixed number of steps.
3. tar members grouped by key (WebDataset ``tar_file_iterator`` / ``group_by_keys``),
   sample shuffle buffer (seeded per stream and epoch); with ``data.hard_negative_batches``
   the buffer shuffles whole hard-negative groups (materials rendered on the identical mesh,
   light and camera, ``[hard_negatives]`` in the dataset spec), so a batch holds every member
   of a group, except where a group straddles two batches.
4. decode only the chosen views' images and the json (never pickle; a view's mask only in
   shards without crop metadata, see ``augment.ObjectGrid``), schema check
   (``phieat.schema.validate_sample``). With ``data.error_policy = "warn"`` an undecodable
   sample, a shard that cannot be opened, and the rest of a shard after a damaged tar header
   (or a shard shorter than its ``index.json`` record) are skipped, logged and counted
   (``SkipCounter``; the trainer logs ``skipped_samples`` / ``skipped_shards``); past
   ``data.max_errors`` or ``data.max_skipped_fraction`` the run stops. ``data.verify_shards``
   checks each shard's sha256 against ``index.json`` as it is read (it holds a whole shard in
   memory; ``phieat-render verify`` checks a dataset without training). With "raise" the
   first unreadable sample or shard stops the run.
5. two views on different meshes and lights (physical augmentation) or the same render twice
   (photometric baseline), mask-aware multi-crop, jitter, iBOT block masks
   (``train.augment``), collate; with ``crops.decode_on_device`` the worker still draws every
   random choice but leaves JPEG decoding, the crops' resampling and the photometric part to
   the training device (``on_device``, called by the trainer where the batch reaches it);
   label = ``phieat.schema.stable_label(material_id)`` with
   physical augmentation (or of the sample key with ``data.labels = "sample"``), or a label
   of the one render (sample key and view) in the photometric baseline, whose positives must
   never be two different renders.

Each sample's random generator is seeded from (seed, epoch, stream, index in epoch), and every
batch carries its stream's position, so ``Loader.state_dict()`` resumes exactly: the next
batches after a resume equal those of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg
from webdataset.tariterators import group_by_keys

from phieat import schema
from train import augment
from train.config import CropConfig, DataConfig

log = logging.getLogger("phieat.train")

WDS_SCHEMES = ("", "file", "pipe", "http", "https")


class DataError(RuntimeError):
    """Shards or samples that cannot be read; the message names the URL or key."""


# ----------------------------------------------------------------------------- sources

# Written by ``phieat-render build`` beside its version folders: {"version": "v-<hash>", ...}.
LATEST_NAME = "latest.json"


@dataclass
class DataSource:
    """What ``data.urls`` names: shard URLs, where the dataset's ``index.json`` is, and how
    the shards were named (one by one, or as a dataset folder / index)."""

    shards: list[str]
    index_url: str | None = None
    explicit: bool = True


def _local_path(url: str) -> str | None:
    """The file system path of a local source (a plain path or ``file://``), else None."""
    if url.startswith("file://"):
        return url[len("file://") :]
    if "://" in url or url.startswith("pipe:"):
        return None
    return url


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _read_json(url: str, what: str) -> Any:
    """A JSON file by URL; a damaged one is a one-line ``DataError`` naming it."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        text = fs.cat_file(path).decode("utf-8")
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{url} is not valid JSON ({exc}): the {what} is damaged; re-run phieat-render build "
            "for this dataset, or name the shards explicitly (a brace pattern or .tar list)"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read the {what} {url}: {exc}") from None


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def _shard_names(index: dict, where: str) -> list[str]:
    """The shard file names an index lists; names that would leave the dataset folder are refused."""
    names = []
    for shard in index["shards"]:
        name = shard["name"]
        if not name.endswith(".tar") or "/" in name or "\\" in name or name.startswith("."):
            raise DataError(f"{where} lists the shard {name!r}, which is not a file in the dataset")
        names.append(name)
    return names


def _follow_latest(url: str) -> str:
    """``url`` itself when it holds ``index.json``, else the version folder its ``latest.json`` names."""
    if _exists(_join(url, schema.INDEX_NAME)):
        return url
    latest = _join(url, LATEST_NAME)
    if not _exists(latest):
        return url
    record = _read_json(latest, "dataset's latest.json")
    version = record.get("version") if isinstance(record, dict) else None
    if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
        raise DataError(f"{latest} names no version folder (its 'version' is {version!r})")
    target = _join(url, version)
    if not _exists(_join(target, schema.INDEX_NAME)):
        raise DataError(
            f"{latest} names the version {version}, but {target} holds no {schema.INDEX_NAME}: "
            "the build did not finish; re-run phieat-render build"
        )
    log.info("%s: latest.json names %s", url, version)
    return target


def _resolve_one(source: str, data: DataConfig) -> DataSource:
    explicit = (
        source.startswith("pipe:") or source.endswith(".tar") or any(c in source for c in "{}")
    )
    if explicit:
        shards = list(braceexpand(source))
        missing = [
            u for u in shards if _local_path(u) is not None and not os.path.isfile(_local_path(u))
        ]
        if len(missing) == 1:
            raise DataError(f"data.urls: {missing[0]} does not exist")
        if missing:
            raise DataError(
                f"data.urls: {len(missing)} of {len(shards)} shards do not exist (first: {missing[0]})"
            )
        return DataSource(shards, None, True)
    path = _local_path(source)
    if source.endswith(".json"):
        if path is not None and not os.path.isfile(path):
            raise DataError(f"data.urls: {source} does not exist")
        base = source.rsplit("/", 1)[0] if "/" in source else "."
        index = schema.validate_index(_read_json(source, "dataset index"), where=source)
        names = _shard_names(index, source)
        return DataSource([_join(base, n) for n in names], source, False)
    if path is not None:
        if not os.path.exists(path):
            raise DataError(
                f"data.urls: {source} does not exist (pass a dataset folder, a version folder "
                "v-<hash>, an index.json, a brace pattern or .tar files)"
            )
        if not os.path.isdir(path):
            raise DataError(
                f"data.urls: {source} is neither a folder, an index.json nor a .tar file"
            )
        folder = _follow_latest(path.rstrip("/") or "/")
        found = sorted(n for n in os.listdir(folder) if n.endswith(".tar"))
        index_path = os.path.join(folder, schema.INDEX_NAME)
        if not os.path.isfile(index_path) and data.index == "auto":
            example = (
                f"{folder}/shard-{{000000..{len(found) - 1:06d}}}.tar"
                if found
                else f"{folder}/<shard>.tar"
            )
            raise DataError(
                f"data.urls: {folder} holds no {schema.INDEX_NAME} (nor {LATEST_NAME}): the dataset "
                f"is incomplete or its index was removed. Re-run phieat-render build, or name the "
                f"shards explicitly: data.urls='{example}'"
            )
        if not found:
            raise DataError(f"data.urls: {folder} holds no .tar shards")
        return DataSource([os.path.join(folder, n) for n in found], index_path, False)
    # A remote dataset or version folder: the shard list comes from its index.
    folder = _follow_latest(source)
    index_path = _join(folder, schema.INDEX_NAME)
    if not _exists(index_path):
        raise DataError(
            f"data.urls: {source} holds no {schema.INDEX_NAME} or {LATEST_NAME}; name remote "
            "shards explicitly (a brace pattern such as .../shard-{000000..000099}.tar)"
        )
    index = schema.validate_index(_read_json(index_path, "dataset index"), where=index_path)
    names = _shard_names(index, index_path)
    return DataSource([_join(folder, n) for n in names], index_path, False)


def resolve_data(data: DataConfig) -> DataSource:
    """Resolve ``data.urls`` up front: every local path is checked, a dataset folder follows
    its ``latest.json``, and a folder without ``index.json`` is refused (unless ``data.index``
    is "" or the shards are named explicitly). Raises ``DataError`` with a one-line message
    (``SchemaError`` for an index that breaks the contract)."""
    sources = [p.strip() for u in data.urls for p in u.split("::") if p.strip()]
    if not sources:
        raise DataError(
            "data.urls is empty: pass a dataset folder or data.urls='/path/to/shard-{000000..000009}.tar'"
        )
    parts = [_resolve_one(s, data) for s in sources]
    shards = [u for p in parts for u in p.shards]
    if not shards:
        raise DataError(f"data.urls {data.urls!r} names no shards")
    return DataSource(shards, parts[0].index_url, all(p.explicit for p in parts))


def expand_urls(urls: list[str] | str) -> list[str]:
    """Expand ``::``-joined sources, brace patterns and local folders into a list of shard URLs."""
    sources = (
        urls.split("::") if isinstance(urls, str) else [p for u in urls for p in u.split("::")]
    )
    out: list[str] = []
    for source in sources:
        source = source.strip()
        if not source:
            continue
        for url in braceexpand(source):
            if "://" not in url and not url.startswith("pipe:") and os.path.isdir(url):
                folder = _follow_latest(url)
                found = sorted(n for n in os.listdir(folder) if n.endswith(".tar"))
                out.extend(os.path.join(folder, n) for n in found)
            else:
                out.append(url)
    if not out:
        raise DataError(f"data.urls {urls!r} names no shards")
    return out


def open_url(url: str):
    """A readable binary stream for a shard URL (WebDataset ``gopen`` or fsspec)."""
    scheme = urlparse(url).scheme if "://" in url or url.startswith("pipe:") else ""
    if scheme in WDS_SCHEMES:
        return wds.gopen(url, "rb")
    return fsspec.open(url, "rb").open()


def index_url(first_shard: str) -> str | None:
    """Where ``index.json`` would be for a dataset whose first shard is ``first_shard``."""
    if first_shard.startswith(("pipe:", "http://", "https://")):
        return None
    return (
        first_shard.rsplit("/", 1)[0] + "/" + schema.INDEX_NAME
        if "/" in first_shard
        else schema.INDEX_NAME
    )


def locate_index(data: DataConfig, shards: list[str], url: str | None = None) -> str | None:
    """Where the dataset's ``index.json`` is read from: ``data.index``, or with "auto" ``url``
    (``DataSource.index_url``), else beside the first shard; None with ``data.index = ""``."""
    if data.index == "":
        return None
    if data.index != "auto":
        return data.index
    return url if url is not None else index_url(shards[0])


def read_index(data: DataConfig, shards: list[str], url: str | None = None) -> dict | None:
    """Load and validate the dataset's ``index.json`` (at ``locate_index``).

    Refuses an unknown schema version with ``SchemaError`` and a file that is not JSON with a
    one-line ``DataError``; returns None when there is none.
    """
    url = locate_index(data, shards, url)
    if url is None:
        return None
    if not _exists(url):
        if data.index != "auto":
            raise DataError(f"data.index {url} does not exist")
        return None
    index = _read_json(url, "dataset index")
    schema.validate_index(index, where=url)
    if not index["complete"]:
        log.warning("%s: dataset build is not complete; training on the shards present", url)
    return index


def shard_records(index: dict | None, shards: list[str], url: str | None) -> dict[str, dict]:
    """``{shard URL: its index.json record}`` for the shards in the index's folder that it lists."""
    if not index or not url:
        return {}
    folder = url.rsplit("/", 1)[0] if "/" in url else "."
    by_name = {s["name"]: s for s in index["shards"]}
    out = {}
    for shard in shards:
        base, _, name = shard.rpartition("/")
        if (base or ".") == folder and name in by_name:
            out[shard] = by_name[name]
    return out


# ----------------------------------------------------------------------------- stream


class SkipCounter:
    """What one stream skipped: unreadable samples and shards (or the rest of a damaged shard).

    With ``data.error_policy = "raise"`` the first one stops the run. Otherwise each is logged
    and counted, and the run stops with a ``DataError`` when more than ``data.max_errors``
    samples and shards together were skipped, or (checked at the end of every epoch) when more
    than ``data.max_skipped_fraction`` of the samples the stream met were lost: the samples
    skipped, plus those of skipped shards where ``index.json`` says how many they held.
    """

    def __init__(self, policy: str, limit: int, fraction: float = 1.0) -> None:
        self.policy, self.limit, self.fraction = policy, limit, fraction
        self.samples = self.shards = 0
        self.seen_samples = self.lost_samples = 0
        self.last = ""

    @property
    def count(self) -> int:
        return self.samples + self.shards

    def _skip(self, message: str) -> None:
        if self.policy == "raise":
            raise DataError(f"{message} (data.error_policy='raise')")
        self.last = message
        log.warning("skipping unreadable data (%d so far): %s", self.count, message)
        if self.count > self.limit:
            raise DataError(
                f"more than data.max_errors={self.limit} samples or shards skipped as unreadable; "
                f"last: {message}. Run phieat-render verify on the dataset"
            )

    def skip_sample(self, message: str) -> None:
        self.samples += 1
        self._skip(message)

    def skip_shard(self, message: str, lost: int = 0) -> None:
        """One shard (or its rest) skipped; ``lost``: how many samples it held that were not read."""
        self.shards += 1
        self.lost_samples += lost
        self.seen_samples += lost
        self._skip(message)

    def member_error(self, exc: Exception) -> bool:
        """WebDataset-style handler for a tar member that cannot be grouped: skip it."""
        self.skip_sample(f"unreadable tar member: {exc}")
        return True

    def check_fraction(self) -> None:
        lost, seen = self.samples + self.lost_samples, self.seen_samples
        if seen and lost / seen > self.fraction:
            raise DataError(
                f"{lost} of {seen} samples were unreadable ({lost / seen:.1%}; {self.shards} "
                f"shard(s) skipped), above data.max_skipped_fraction={self.fraction:g}; last: "
                f"{self.last}. Run phieat-render verify on the dataset, or raise "
                "data.max_skipped_fraction"
            )


def _tar_files(tar: tarfile.TarFile, url: str) -> Iterator[dict]:
    for info in tar:
        if not info.isreg() or re.match(r"__[^/]*__($|/)", info.name):
            continue
        handle = tar.extractfile(info)
        data = handle.read() if handle is not None else b""
        tar.members = []  # a stream: keep no member list
        yield {"fname": info.name, "data": data, "__url__": url}


def _damaged_tail(tar: tarfile.TarFile) -> bool:
    """After ``tarfile`` stopped: True when data follows, i.e. it stopped at a damaged header
    (``tarfile`` treats an invalid header after the first as the end of the archive)."""
    while True:
        chunk = tar.fileobj.read(1 << 20)
        if not chunk:
            return False
        if any(chunk):
            return True


def _raw_samples(
    url: str, skips: SkipCounter, record: dict | None = None, verify: bool = False
) -> Iterator[dict]:
    """Samples of one shard. A shard that cannot be opened, fails its ``index.json`` sha256
    (``verify``), or stops early (a damaged header or truncation, and fewer samples than its
    index record says) counts as one skipped shard; the samples read before the damage are kept."""
    expected = record["samples"] if record is not None else 0
    try:
        stream = open_url(url)
    except Exception as exc:
        skips.skip_shard(f"cannot open shard {url}: {exc}", expected)
        return
    read = 0
    try:
        if verify and record is not None:
            data = stream.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest != record["sha256"]:
                skips.skip_shard(
                    f"shard {url}: sha256 {digest[:12]}... does not match its index.json record "
                    f"{record['sha256'][:12]}... (modified or damaged)",
                    expected,
                )
                return
            stream.close()
            stream = io.BytesIO(data)
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for raw in group_by_keys(_tar_files(tar, url), handler=skips.member_error):
            read += 1
            yield raw
        if _damaged_tail(tar):
            skips.skip_shard(
                f"shard {url} has a damaged tar header after {read} samples: the rest is skipped",
                max(0, expected - read),
            )
        elif read < expected:
            skips.skip_shard(
                f"shard {url} ends after {read} of the {expected} samples index.json lists "
                "(truncated)",
                expected - read,
            )
    except DataError:
        raise
    except Exception as exc:
        skips.skip_shard(
            f"shard {url} is corrupt after {read} samples: {exc}", max(0, expected - read)
        )
    finally:
        stream.close()


def _hard_negative_group(raw: dict) -> str | None:
    try:
        return json.loads(raw["json"]).get(schema.HARD_NEGATIVE_GROUP)
    except (KeyError, ValueError, AttributeError):
        return None  # the sample's own decode reports what is wrong with it


def _group_units(raws: Iterator[dict]) -> Iterator[list[dict]]:
    """Consecutive samples of one hard-negative group (the renderer writes a group's members
    one after another) as one unit; samples without a group are units of one."""
    unit: list[dict] = []
    current = None
    for raw in raws:
        group = _hard_negative_group(raw)
        if unit and (group is None or group != current):
            yield unit
            unit = []
        unit.append(raw)
        current = group
    if unit:
        yield unit


def choose_views(rng: np.random.Generator, views: list[dict], physical: bool) -> tuple[int, int]:
    """Two view indices: different mesh and light when possible (physical), else one render twice."""
    first = int(rng.integers(len(views)))
    if not physical:
        return first, first
    others = [j for j in range(len(views)) if j != first]
    both = [
        j
        for j in others
        if views[j]["mesh_id"] != views[first]["mesh_id"]
        and views[j]["light_id"] != views[first]["light_id"]
    ]
    either = [
        j
        for j in others
        if views[j]["mesh_id"] != views[first]["mesh_id"]
        or views[j]["light_id"] != views[first]["light_id"]
    ]
    pool = both or either or others
    return first, int(pool[int(rng.integers(len(pool)))])


def sample_label(
    material_id: str, key: str, pair: tuple[int, int], physical: bool, by: str = "material"
) -> int:
    """The label L_contrast and KoLeo group by. Physical augmentation: the material
    (``by="material"``) or only this sample's views (``by="sample"``, no material labels).
    Photometric baseline: the render itself (sample key and view), so that when a material
    returns in another batch as another render, the baseline never treats two renders as
    positives."""
    if not physical:
        return schema.stable_label(f"{key}/view{pair[0]}")
    return schema.stable_label(material_id if by == "material" else key)


def _decode_jpegs(data: torch.Tensor | list[torch.Tensor], device: torch.device | str):
    """``torchvision.io.decode_jpeg`` to RGB (a list is decoded in one batched call, with
    nvJPEG on CUDA). torchvision 0.29 marks its image codecs deprecated in favour of
    TorchCodec, which this project does not ship yet: the warning is silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=torch.device(device))


def _decode_image(data: bytes, key: str, member: str) -> torch.Tensor:
    """A view as uint8 ``[3, H, W]``: JPEG with torchvision's decoder (the one the device
    path uses, so both paths see the same pixels on the CPU), PNG (8 or 16 bit) with PIL."""
    if member.endswith(".exr"):
        raise DataError(
            f"sample {key}: {member} is EXR; the trainer reads jpg/png views (render with image_format jpg or png)"
        )
    try:
        if member.endswith(".jpg"):
            return _decode_jpegs(torch.frombuffer(bytearray(data), dtype=torch.uint8), "cpu")
        image = Image.open(io.BytesIO(data))
        if image.mode in ("I;16", "I;16B", "I"):
            image = Image.fromarray(
                (np.asarray(image, dtype=np.float32) / 257.0).clip(0, 255).astype(np.uint8)
            )
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    except (OSError, ValueError, SyntaxError, RuntimeError) as exc:  # damaged files
        reason = str(exc).split(" <_io.")[0]
        raise DataError(f"{member} cannot be decoded ({type(exc).__name__}: {reason})") from None


def _jpeg_payload(data: bytes, key: str, member: str) -> tuple[torch.Tensor, int, int]:
    """JPEG bytes left for the device to decode, and the image's width and height read from
    its header. A damaged header or a truncated file is refused here (and skipped by
    ``data.error_policy``); damage inside the compressed data shows only on the device."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ValueError(f"a {image.format} file named .jpg")
            width, height = image.size
        if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise ValueError("no end-of-image marker: the file is truncated")
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).split(" <_io.")[0]
        raise DataError(f"{member} cannot be decoded ({type(exc).__name__}: {reason})") from None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), width, height


def _view_member(sample: dict, index: int) -> str:
    for ext in ("jpg", "png", "exr"):
        name = f"view{index}.{ext}"
        if name in sample:
            return name
    raise DataError(f"sample {sample['__key__']}: no image member for view {index}")


def _object_grid(
    raw: dict, view: dict, index: int, width: int, height: int
) -> augment.ObjectGrid | None:
    """Where view ``index``'s object is: from the crop metadata in its json when the renderer
    wrote it (no mask decode), else from its mask (older shards), else None (no object known)."""
    if schema.OBJECT_BBOX in view:
        return augment.ObjectGrid.from_meta(view, width, height)
    member = schema.mask_member(index)
    if member not in raw:
        return None
    try:
        mask = np.asarray(Image.open(io.BytesIO(raw[member])).convert("L")) > schema.MASK_THRESHOLD
    except (OSError, ValueError, SyntaxError) as exc:  # a damaged mask file
        reason = str(exc).split(" <_io.")[0]
        raise DataError(f"{member} cannot be decoded ({type(exc).__name__}: {reason})") from None
    if mask.shape != (height, width):
        raise DataError(
            f"sample {raw['__key__']}: view{index} mask is {mask.shape}, image {height}x{width}"
        )
    return augment.ObjectGrid.from_mask(mask)


def make_sample(
    raw: dict,
    rng: np.random.Generator,
    data: DataConfig,
    crops: CropConfig,
    patch_size: int,
    defer: bool = False,
) -> dict:
    """Decode one raw sample and build its crops (uint8), photometric params and iBOT masks.

    With ``defer`` (``crops.decode_on_device``) every random choice is drawn exactly as
    without it, but the crops are not cut: the sample carries its views (JPEG bytes, or
    decoded uint8 for other formats) and per crop the view, box and flip, for ``on_device``."""
    key = raw["__key__"]
    meta = schema.validate_sample(raw) if data.validate_samples else json.loads(raw["json"])
    material_id, _ = schema.parse_key(key)
    pair = choose_views(rng, meta["views"], data.physical_augmentation)
    decoded: dict[int, tuple[torch.Tensor, augment.ObjectGrid | None]] = {}
    sizes: dict[int, tuple[int, int]] = {}
    for index in sorted(set(pair)):
        member = _view_member(raw, index)
        if defer and member.endswith(".jpg"):
            image, width, height = _jpeg_payload(raw[member], key, member)
        else:
            image = _decode_image(raw[member], key, member)
            height, width = image.shape[1:]
        sizes[index] = (width, height)
        grid = None
        if crops.min_object_fraction > 0:
            grid = _object_grid(raw, meta["views"][index], index, width, height)
        decoded[index] = (image, grid)
    slots = {view: slot for slot, view in enumerate(decoded)}

    def crop(view: int, size: int, scale: list[float], blur_prob: float, solarize_prob: float):
        image, grid = decoded[view]
        width, height = sizes[view]
        box = augment.crop_box(
            rng, width, height, (scale[0], scale[1]), grid, crops.min_object_fraction,
            crops.crop_tries,
        )  # fmt: skip
        flip = crops.hflip and rng.random() < 0.5
        pixels = (slots[view], box, flip) if defer else augment.render_crop(image, box, size, flip)
        params = augment.photometric_params(
            rng, size, crops.jitter_prob, crops.brightness, crops.contrast, crops.saturation,
            crops.grayscale_prob, blur_prob, (crops.blur_sigma[0], crops.blur_sigma[1]), solarize_prob,
        )  # fmt: skip
        return pixels, params

    globals_, gparams, locals_, lparams, views, masks = [], [], [], [], [], []
    grid = crops.global_size // patch_size
    for c in range(2 * crops.global_per_view):
        view = pair[c // crops.global_per_view]
        second = c % 2 == 1
        pixels, params = crop(
            view, crops.global_size, crops.global_scale, crops.blur_prob_global[int(second)],
            crops.solarize_prob if second else 0.0,
        )  # fmt: skip
        globals_.append(pixels)
        gparams.append(params)
        views.append(view)
        if rng.random() < crops.mask_prob:
            ratio = rng.uniform(crops.mask_ratio[0], crops.mask_ratio[1])
            masks.append(augment.block_mask(rng, grid, grid, ratio))
        else:
            masks.append(np.zeros((grid, grid), dtype=bool))
    for c in range(2 * crops.local_per_view):
        view = pair[c // crops.local_per_view]
        pixels, params = crop(view, crops.local_size, crops.local_scale, crops.blur_prob_local, 0.0)
        locals_.append(pixels)
        lparams.append(params)
    sample = {
        "key": key,
        "label": sample_label(material_id, key, pair, data.physical_augmentation, data.labels),
        "global": globals_,
        "global_params": gparams,
        "local": locals_,
        "local_params": lparams,
        "masks": masks,
        "views": views,
    }
    if defer:
        sample["images"] = [image for image, _ in decoded.values()]
    return sample


def collate(samples: list[dict], photometric_here: bool) -> dict:
    """Crop-major batch: crop ``c`` of sample ``b`` is row ``c * B + b``."""

    def stack(name: str) -> torch.Tensor:
        n = len(samples[0][name])
        return torch.stack([s[name][c] for c in range(n) for s in samples])

    def params(name: str) -> torch.Tensor:
        n = len(samples[0][name])
        return torch.tensor([s[name][c] for c in range(n) for s in samples], dtype=torch.float32)

    batch: dict[str, Any] = {
        "keys": [s["key"] for s in samples],
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "masks": torch.from_numpy(
            np.stack([s["masks"][c] for c in range(len(samples[0]["masks"])) for s in samples])
        ),
        "views": torch.tensor([s["views"] for s in samples], dtype=torch.int64),
    }
    if "images" in samples[0]:
        return _collate_deferred(samples, batch, params)
    global_px, local_px = stack("global"), (stack("local") if samples[0]["local"] else None)
    global_p, local_p = (
        params("global_params"),
        (params("local_params") if samples[0]["local"] else None),
    )
    if photometric_here:
        batch["global"] = augment.photometric(global_px, global_p)
        batch["local"] = augment.photometric(local_px, local_p) if local_px is not None else None
    else:
        batch["global"], batch["global_params"] = global_px, global_p
        batch["local"], batch["local_params"] = local_px, local_p
    return batch


def _collate_deferred(samples: list[dict], batch: dict[str, Any], params) -> dict:
    """A ``decode_on_device`` batch: ``images`` (each sample's views, in order), and per crop
    size ``<name>_source`` (index into ``images``), ``<name>_boxes`` (x0, y0, x1, y1),
    ``<name>_flip`` and ``<name>_params``, crop-major as ``collate``; ``on_device`` finishes it."""
    first: list[int] = []
    images: list[torch.Tensor] = []
    for s in samples:
        first.append(len(images))
        images.extend(s["images"])
    batch["images"] = pack_images(images)
    for name in ("global", "local"):
        n = len(samples[0][name])
        if n == 0:
            batch[name] = batch[f"{name}_boxes"] = None
            continue
        crops = [(first[b], *samples[b][name][c]) for c in range(n) for b in range(len(samples))]
        batch[f"{name}_source"] = torch.tensor([f + slot for f, slot, _, _ in crops])
        batch[f"{name}_boxes"] = torch.tensor([box for _, _, box, _ in crops], dtype=torch.int64)
        batch[f"{name}_flip"] = torch.tensor([flip for _, _, _, flip in crops], dtype=torch.bool)
        batch[f"{name}_params"] = params(f"{name}_params")
    return batch


def pack_images(images: list[torch.Tensor]) -> dict[str, Any]:
    """Views for the device as three tensors, whatever the batch size (a data worker hands
    each tensor over through its own shared-memory segment): ``bytes``, every JPEG payload
    (1-D uint8) end to end; ``lengths[V]``, each view's payload size, 0 for a view decoded in
    the worker; ``decoded``, those views (uint8 ``[3, H, W]``) in order."""
    jpeg = [x for x in images if x.dim() == 1]
    return {
        "bytes": torch.cat(jpeg) if jpeg else torch.zeros(0, dtype=torch.uint8),
        "lengths": torch.tensor([len(x) if x.dim() == 1 else 0 for x in images]),
        "decoded": [x for x in images if x.dim() != 1],
    }


def _device_images(images: dict[str, Any], device: torch.device | str) -> torch.Tensor:
    """Views (``pack_images``) as uint8 ``[V, 3, H, W]`` on ``device``: the JPEGs decoded
    there in one batched call (nvJPEG on CUDA), views decoded in the worker copied; mixed
    sizes are zero-padded at the bottom/right (crop boxes never reach the padding)."""
    lengths = images["lengths"].tolist()
    payloads = torch.split(images["bytes"], [n for n in lengths if n > 0])
    decoded = iter(_decode_jpegs(list(payloads), device) if payloads else [])
    others = iter(images["decoded"])
    out = [next(decoded) if n > 0 else next(others).to(device, non_blocking=True) for n in lengths]
    height = max(x.shape[1] for x in out)
    width = max(x.shape[2] for x in out)
    if all(x.shape[1:] == (height, width) for x in out):
        return torch.stack(out)
    return torch.stack([F.pad(x, (0, width - x.shape[2], 0, height - x.shape[1])) for x in out])


def on_device(batch: dict, device: torch.device | str, crops: CropConfig) -> dict:
    """Finish a ``decode_on_device`` batch on the training device: decode the views, cut and
    resize every crop of a size in one batched op (``augment.cut_crops``: the worker path's
    filter, without its rounding to uint8), then the photometric part. Returns the batch
    the worker path would have given (float, normalised), on ``device``."""
    device = torch.device(device)
    try:
        images = _device_images(batch["images"], device)
    except RuntimeError as exc:
        raise DataError(
            f"a JPEG view of the batch starting {batch['keys'][0]} cannot be decoded on {device} "
            f"({exc}); run phieat-render verify, or set crops.decode_on_device=false so that "
            "the workers skip damaged samples"
        ) from None
    out = {k: v for k, v in batch.items() if k != "images" and not k.endswith(_DEFERRED)}
    for name in ("masks", "labels"):
        out[name] = batch[name].to(device, non_blocking=True)
    for name, size in (("global", crops.global_size), ("local", crops.local_size)):
        if batch.get(f"{name}_boxes") is None:
            out[name] = None
            continue
        pixels = augment.cut_crops(
            images, batch[f"{name}_source"], batch[f"{name}_boxes"], size, batch[f"{name}_flip"]
        )
        out[name] = augment.photometric(pixels.div_(255.0), batch[f"{name}_params"])
    return out


_DEFERRED = ("_source", "_boxes", "_flip", "_params")


def _seed(*parts: int) -> list[int]:
    return [int(p) & 0xFFFFFFFF for p in parts]


class ShardStream(IterableDataset):
    """Endless batches for one rank; one logical stream per data worker (see module doc)."""

    def __init__(
        self,
        shards: list[str],
        data: DataConfig,
        crops: CropConfig,
        patch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start: dict[int, tuple[int, int]] | None = None,
        rotation: int = 0,
        records: dict[str, dict] | None = None,
    ) -> None:
        super().__init__()
        self.shards, self.data, self.crops = shards, data, crops
        self.patch_size, self.seed, self.rank, self.world = patch_size, seed, rank, world
        self.start = start or {}
        self.rotation = rotation
        self.records = records or {}

    def _epoch_plan(self, epoch: int, stream: int, streams: int) -> tuple[list[str], int, int]:
        """(shards to read, sample stride, sample phase) for one stream in one epoch."""
        n = len(self.shards)
        rng = np.random.default_rng(_seed(self.seed, epoch, 0x5A4D))
        if self.data.resampled:
            own = np.random.default_rng(_seed(self.seed, epoch, stream, 0x5E5A))
            picks = own.integers(0, n, size=max(1, n // streams))
            return [self.shards[i] for i in picks], 1, 0
        order = rng.permutation(n) if self.data.shuffle_shards else np.arange(n)
        if n >= streams:
            return [self.shards[i] for i in order[stream::streams]], 1, 0
        return [self.shards[i] for i in order], streams, stream

    def _epoch_raw(
        self, epoch: int, stream: int, streams: int, skips: SkipCounter
    ) -> Iterator[dict]:
        shards, stride, phase = self._epoch_plan(epoch, stream, streams)
        rng = np.random.default_rng(_seed(self.seed, epoch, stream, 0xB0FF))

        def mine() -> Iterator[dict]:
            position = 0
            for url in shards:
                record = self.records.get(url)
                for raw in _raw_samples(url, skips, record, self.data.verify_shards):
                    position += 1
                    if (position - 1) % stride == phase:
                        yield raw

        # The shuffle buffer holds units: single samples, or with data.hard_negative_batches
        # whole hard-negative groups, which then reach the batch one after another.
        units = _group_units(mine()) if self.data.hard_negative_batches else ([r] for r in mine())
        buffer: list[list[dict]] = []
        held, size = 0, max(1, self.data.shuffle_buffer)
        for unit in units:
            if size == 1:
                yield from unit
                continue
            if held < size:
                buffer.append(unit)
                held += len(unit)
                continue
            pick = int(rng.integers(len(buffer)))
            buffer[pick], unit = unit, buffer[pick]
            held += len(buffer[pick]) - len(unit)
            yield from unit
        while buffer:
            yield from buffer.pop(int(rng.integers(len(buffer))))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if info is not None:
            torch.set_num_threads(1)
        logical = (worker + self.rotation) % workers
        stream = self.rank * workers + logical
        streams = self.world * workers
        epoch, offset = self.start.get(logical, (0, 0))
        skips = SkipCounter(
            self.data.error_policy, self.data.max_errors, self.data.max_skipped_fraction
        )
        photometric_here = not self.crops.on_device
        defer = self.crops.on_device and self.crops.decode_on_device
        batch: list[dict] = []
        empty_epochs = 0
        while True:
            index = -1
            for index, raw in enumerate(self._epoch_raw(epoch, stream, streams, skips)):
                if index < offset:
                    continue  # resume: replay the order without decoding
                rng = np.random.default_rng(_seed(self.seed, epoch, stream, index, 0xC0DE))
                skips.seen_samples += 1
                try:
                    batch.append(
                        make_sample(raw, rng, self.data, self.crops, self.patch_size, defer)
                    )
                except Exception as exc:
                    where = f"sample {raw.get('__key__')} in {raw.get('__url__')}"
                    what = str(exc) if isinstance(exc, ValueError | DataError) else repr(exc)
                    skips.skip_sample(f"{where}: {what}")
                if len(batch) == self.data.batch_size:
                    out = collate(batch, photometric_here)
                    out["state"] = torch.tensor([logical, epoch, index + 1], dtype=torch.int64)
                    out["skipped"] = torch.tensor([skips.samples, skips.shards], dtype=torch.int64)
                    batch = []
                    yield out
            skips.check_fraction()
            empty_epochs = empty_epochs + 1 if index < 0 else 0
            if empty_epochs >= 2:
                raise DataError(
                    f"stream {stream}/{streams} read no samples in two epochs from {len(self.shards)} shard(s) "
                    f"starting {self.shards[0]}: check data.urls"
                )
            epoch, offset = epoch + 1, 0


class Loader:
    """Batches for one rank with an exact, resumable position (``state_dict`` / ``load_state_dict``)."""

    def __init__(
        self,
        shards: list[str],
        data: DataConfig,
        crops: CropConfig,
        patch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        pin_memory: bool = False,
        records: dict[str, dict] | None = None,
    ) -> None:
        self.shards, self.data, self.crops = shards, data, crops
        self.patch_size, self.seed, self.rank, self.world = patch_size, seed, rank, world
        self.pin_memory = pin_memory
        self.records = records or {}
        self.workers = max(1, data.num_workers)
        self.batches = 0
        self.streams: dict[int, tuple[int, int]] = {}
        # Per logical stream: (samples, shards) skipped as unreadable since this process started.
        self.skipped: dict[int, tuple[int, int]] = {}

    @property
    def errors(self) -> dict[int, int]:
        """Per logical stream: samples and shards skipped, together."""
        return {k: a + b for k, (a, b) in self.skipped.items()}

    @property
    def skipped_samples(self) -> int:
        return sum(a for a, _ in self.skipped.values())

    @property
    def skipped_shards(self) -> int:
        return sum(b for _, b in self.skipped.values())

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "workers": self.workers,
            "streams": {str(k): [int(v[0]), int(v[1])] for k, v in self.streams.items()},
            "errors": {str(k): int(v) for k, v in self.errors.items()},
            "skipped": {str(k): [int(v[0]), int(v[1])] for k, v in self.skipped.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["workers"]) != self.workers:
            raise DataError(
                f"the checkpoint's loader used data.num_workers={state['workers']} (this run: "
                f"{self.data.num_workers}); set it back to resume the data stream exactly"
            )
        self.batches = int(state["batches"])
        self.streams = {int(k): (int(v[0]), int(v[1])) for k, v in state["streams"].items()}
        self.skipped = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("skipped", {}).items()}

    @property
    def epoch(self) -> int:
        return min((e for e, _ in self.streams.values()), default=0)

    def __iter__(self) -> Iterator[dict]:
        dataset = ShardStream(
            self.shards, self.data, self.crops, self.patch_size, self.seed, self.rank, self.world,
            start=dict(self.streams), rotation=self.batches % self.workers, records=self.records,
        )  # fmt: skip
        if self.data.num_workers > 0:
            loader = DataLoader(
                dataset, batch_size=None, num_workers=self.data.num_workers, pin_memory=self.pin_memory,
                prefetch_factor=2, persistent_workers=False,
            )  # fmt: skip
        else:
            loader = dataset
        for batch in loader:
            logical, epoch, offset = (int(v) for v in batch.pop("state"))
            self.streams[logical] = (epoch, offset)
            samples, shards = (int(v) for v in batch.pop("skipped"))
            self.skipped[logical] = (samples, shards)
            self.batches += 1
            yield batch
