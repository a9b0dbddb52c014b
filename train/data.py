"""Streaming shard loader: WebDataset tars -> two views per material -> multi-crop batches.

Pipeline (one logical *stream* per rank x data worker), top to bottom:

1. ``expand_urls``: sources are local paths or folders, brace patterns
   (``shard-{000000..000099}.tar``, expanded in ``pipe:`` commands too, as WebDataset does),
   ``http(s)://`` and ``pipe:`` (WebDataset ``gopen``) or any fsspec URL (``s3://``,
   ``gs://``, ``memory://``); join several with ``::``.
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
4. decode only the chosen views' images and masks and the json (never pickle), schema check
   (``phieat.schema.validate_sample``); corrupt samples and shards are counted and skipped
   (``data.error_policy = "warn"``) or raised.
5. two views on different meshes and lights (physical augmentation) or the same render twice
   (photometric baseline), mask-aware multi-crop, jitter, iBOT block masks
   (``train.augment``), collate; label = ``phieat.schema.stable_label(material_id)`` with
   physical augmentation (or of the sample key with ``data.labels = "sample"``), or a label
   of the one render (sample key and view) in the photometric baseline, whose positives must
   never be two different renders.

Each sample's random generator is seeded from (seed, epoch, stream, index in epoch), and every
batch carries its stream's position, so ``Loader.state_dict()`` resumes exactly: the next
batches after a resume equal those of an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import fsspec
import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from phieat import schema
from train import augment
from train.config import CropConfig, DataConfig

log = logging.getLogger("phieat.train")

WDS_SCHEMES = ("", "file", "pipe", "http", "https")


class DataError(RuntimeError):
    """Shards or samples that cannot be read; the message names the URL or key."""


# ----------------------------------------------------------------------------- sources


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
                found = sorted(n for n in os.listdir(url) if n.endswith(".tar"))
                out.extend(os.path.join(url, n) for n in found)
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


def read_index(data: DataConfig, shards: list[str]) -> dict | None:
    """Load and validate the dataset's ``index.json`` (``data.index``; "auto" looks beside the shards).

    Refuses an unknown schema version with ``SchemaError``; returns None when there is none.
    """
    if data.index == "":
        return None
    url = index_url(shards[0]) if data.index == "auto" else data.index
    if url is None:
        return None
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        if data.index != "auto":
            raise DataError(f"data.index {url} does not exist")
        return None
    with fs.open(path, "rb") as handle:
        index = json.loads(handle.read().decode("utf-8"))
    schema.validate_index(index, where=url)
    if not index["complete"]:
        log.warning("%s: dataset build is not complete; training on the shards present", url)
    return index


# ----------------------------------------------------------------------------- stream


class ErrorCounter:
    def __init__(self, policy: str, limit: int) -> None:
        self.policy, self.limit, self.count = policy, limit, 0

    def __call__(self, exc: Exception) -> bool:
        """WebDataset-style handler: True = skip and continue."""
        if self.policy == "raise":
            return False
        self.count += 1
        log.warning("skipping unreadable data (%d so far): %s", self.count, exc)
        if self.count > self.limit:
            raise DataError(
                f"more than data.max_errors={self.limit} unreadable samples; last: {exc}"
            ) from exc
        return True


def _raw_samples(url: str, errors: ErrorCounter) -> Iterator[dict]:
    try:
        stream = open_url(url)
    except Exception as exc:
        if errors(DataError(f"cannot open shard {url}: {exc}")):
            return
        raise
    try:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream, handler=errors))
        yield from group_by_keys(files, handler=errors)
    except Exception as exc:
        if not errors(DataError(f"shard {url} is corrupt: {exc}")):
            raise
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


def _decode_image(data: bytes, key: str, member: str) -> Image.Image:
    if member.endswith(".exr"):
        raise DataError(
            f"sample {key}: {member} is EXR; the trainer reads jpg/png views (render with image_format jpg or png)"
        )
    image = Image.open(io.BytesIO(data))
    if image.mode in ("I;16", "I;16B", "I"):
        image = Image.fromarray(
            (np.asarray(image, dtype=np.float32) / 257.0).clip(0, 255).astype(np.uint8)
        )
    return image.convert("RGB")


def _view_member(sample: dict, index: int) -> str:
    for ext in ("jpg", "png", "exr"):
        name = f"view{index}.{ext}"
        if name in sample:
            return name
    raise DataError(f"sample {sample['__key__']}: no image member for view {index}")


def make_sample(
    raw: dict, rng: np.random.Generator, data: DataConfig, crops: CropConfig, patch_size: int
) -> dict:
    """Decode one raw sample and build its crops (uint8), photometric params and iBOT masks."""
    key = raw["__key__"]
    meta = schema.validate_sample(raw) if data.validate_samples else json.loads(raw["json"])
    material_id, _ = schema.parse_key(key)
    pair = choose_views(rng, meta["views"], data.physical_augmentation)
    decoded: dict[int, tuple[Image.Image, np.ndarray | None, np.ndarray | None]] = {}
    for index in sorted(set(pair)):
        member = _view_member(raw, index)
        image = _decode_image(raw[member], key, member)
        table = points = None
        mask_bytes = raw.get(schema.mask_member(index))
        if mask_bytes is not None and crops.min_object_fraction > 0:
            mask = np.asarray(Image.open(io.BytesIO(mask_bytes)).convert("L")) > 127
            if mask.shape != (image.height, image.width):
                raise DataError(
                    f"sample {key}: view{index} mask is {mask.shape}, image {image.height}x{image.width}"
                )
            if mask.any():
                table = augment.mask_integral(mask)
                points = np.argwhere(mask)[:: max(1, int(mask.sum()) // 512)]
        decoded[index] = (image, table, points)

    def crop(view: int, size: int, scale: list[float], blur_prob: float, solarize_prob: float):
        image, table, points = decoded[view]
        box = augment.crop_box(
            rng, image.width, image.height, (scale[0], scale[1]), table, crops.min_object_fraction,
            crops.crop_tries, points,
        )  # fmt: skip
        flip = crops.hflip and rng.random() < 0.5
        pixels = augment.render_crop(image, box, size, flip)
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
    return {
        "key": key,
        "label": sample_label(material_id, key, pair, data.physical_augmentation, data.labels),
        "global": globals_,
        "global_params": gparams,
        "local": locals_,
        "local_params": lparams,
        "masks": masks,
        "views": views,
    }


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
    ) -> None:
        super().__init__()
        self.shards, self.data, self.crops = shards, data, crops
        self.patch_size, self.seed, self.rank, self.world = patch_size, seed, rank, world
        self.start = start or {}
        self.rotation = rotation

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
        self, epoch: int, stream: int, streams: int, errors: ErrorCounter
    ) -> Iterator[dict]:
        shards, stride, phase = self._epoch_plan(epoch, stream, streams)
        rng = np.random.default_rng(_seed(self.seed, epoch, stream, 0xB0FF))

        def mine() -> Iterator[dict]:
            position = 0
            for url in shards:
                for raw in _raw_samples(url, errors):
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
        errors = ErrorCounter(self.data.error_policy, self.data.max_errors)
        photometric_here = not self.crops.on_device
        batch: list[dict] = []
        empty_epochs = 0
        while True:
            index = -1
            for index, raw in enumerate(self._epoch_raw(epoch, stream, streams, errors)):
                if index < offset:
                    continue  # resume: replay the order without decoding
                rng = np.random.default_rng(_seed(self.seed, epoch, stream, index, 0xC0DE))
                try:
                    batch.append(make_sample(raw, rng, self.data, self.crops, self.patch_size))
                except Exception as exc:
                    where = f"sample {raw.get('__key__')} in {raw.get('__url__')}"
                    if not errors(DataError(f"{where}: {exc}")):
                        raise DataError(f"{where}: {exc} (data.error_policy='raise')") from exc
                if len(batch) == self.data.batch_size:
                    out = collate(batch, photometric_here)
                    out["state"] = torch.tensor([logical, epoch, index + 1], dtype=torch.int64)
                    out["errors"] = errors.count
                    batch = []
                    yield out
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
    ) -> None:
        self.shards, self.data, self.crops = shards, data, crops
        self.patch_size, self.seed, self.rank, self.world = patch_size, seed, rank, world
        self.pin_memory = pin_memory
        self.workers = max(1, data.num_workers)
        self.batches = 0
        self.streams: dict[int, tuple[int, int]] = {}
        self.errors: dict[int, int] = {}

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "workers": self.workers,
            "streams": {str(k): [int(v[0]), int(v[1])] for k, v in self.streams.items()},
            "errors": {str(k): int(v) for k, v in self.errors.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["workers"]) != self.workers:
            raise DataError(
                f"the checkpoint's loader used data.num_workers={state['workers']} (this run: "
                f"{self.data.num_workers}); set it back to resume the data stream exactly"
            )
        self.batches = int(state["batches"])
        self.streams = {int(k): (int(v[0]), int(v[1])) for k, v in state["streams"].items()}
        self.errors = {int(k): int(v) for k, v in state.get("errors", {}).items()}

    @property
    def epoch(self) -> int:
        return min((e for e, _ in self.streams.values()), default=0)

    def __iter__(self) -> Iterator[dict]:
        dataset = ShardStream(
            self.shards, self.data, self.crops, self.patch_size, self.seed, self.rank, self.world,
            start=dict(self.streams), rotation=self.batches % self.workers,
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
            self.errors[logical] = int(batch.pop("errors"))
            self.batches += 1
            yield batch
