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

Where each part lives: stage 1 in ``train.sources`` (``resolve_data``, ``read_index``,
``open_url``, ``DataError``); the per-sample work of stages 4-5 in ``train.samples``
(``make_sample``, ``collate``, and ``on_device`` for the device half); this module holds
stages 2-3 and the loop around them (``SkipCounter``, the tar reading, ``ShardStream``,
``Loader``). Every name of the pipeline stays importable from ``train.data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from phieat import schema
from train.config import CropConfig, DataConfig
from train.samples import (  # noqa: F401  (_device_images: bench/train_gpu.py reads it from here)
    _device_images,
    choose_views,
    collate,
    make_sample,
    on_device,
    pack_images,
    sample_label,
)
from train.sources import (
    LATEST_NAME,
    DataError,
    DataSource,
    expand_urls,
    index_url,
    locate_index,
    open_url,
    read_index,
    resolve_data,
    shard_records,
)

# The pipeline's names, importable from here whichever module holds them.
__all__ = [
    "LATEST_NAME",
    "DataError",
    "DataSource",
    "Loader",
    "ShardStream",
    "SkipCounter",
    "choose_views",
    "collate",
    "expand_urls",
    "index_url",
    "locate_index",
    "make_sample",
    "on_device",
    "open_url",
    "pack_images",
    "read_index",
    "resolve_data",
    "sample_label",
    "shard_records",
]

log = logging.getLogger("phieat.train")


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
