"""One raw sample to its crops, and crops to a batch: stages 4-5 of the pipeline in ``train.data``.

``make_sample`` decodes the two chosen views (``choose_views``), finds the object in each
(``_object_grid``: crop metadata, else the mask), draws every crop box, flip, photometric
parameter and iBOT mask from the sample's generator, and labels it (``sample_label``);
``collate`` stacks samples crop-major. With ``crops.decode_on_device`` the worker leaves the
JPEG decode and the crops' resampling to the training device: ``pack_images`` hands the views
over, and ``on_device`` (called by the trainer where the batch reaches its device) decodes
them (``_device_images``) and cuts the crops.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from phieat import schema
from train import augment
from train.config import CropConfig, DataConfig
from train.sources import DataError


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
