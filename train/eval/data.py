"""Read an evaluation dataset into arrays, and refuse one that leaks into training.

An eval dataset is a set of shards written per ``phieat.schema`` (``<key>.view{i}.jpg``,
optional ``<key>.view{i}.mask.png`` and 16-bit ``<key>.view{i}.matid.png``, and
``<key>.json``). ``read_eval_set`` flattens it into one row per *view*::

    es = read_eval_set("out/eval-tiny")          # folder/URL with index.json, a .tar, or a
    es.images.shape, es.material[:3]             # brace pattern "dir/shard-{000000..000003}.tar"

``check_leakage`` compares the materials, material groups, meshes and lights of an eval
set with those of a training dataset (its ``index.json``; what the index does not list is
read from the json members of the shards it names) and raises ``LeakageError`` naming every
shared ID.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields

import braceexpand
import fsspec
import numpy as np
from PIL import Image

from phieat import schema

logger = logging.getLogger("phieat.train")

IMAGE_EXTENSIONS = ("jpg", "png")


class LeakageError(RuntimeError):
    """The eval set shares materials, groups, meshes or lights with a training set."""


# ----------------------------------------------------------------------------- URLs


def _join(base: str, name: str) -> str:
    if "://" in base:
        return base.rstrip("/") + "/" + name
    return posixpath.join(base, name)


def _read_json(url: str) -> dict:
    with fsspec.open(url, "rt", encoding="utf-8") as f:
        return json.load(f)


def resolve_shards(url: str) -> tuple[list[str], dict | None]:
    """Shard URLs of a dataset, and its ``index.json`` when there is one.

    ``url`` may be a ``.tar`` file, a brace pattern (``dir/shard-{000000..000009}.tar``), an
    ``index.json`` path, a folder/URL prefix holding ``index.json`` (or, for a local folder
    without one, ``shard-*.tar`` files), or a dataset folder whose ``latest.json`` names the
    version folder.
    """
    if "{" in url:
        return list(braceexpand.braceexpand(url)), None
    if url.endswith(".tar"):
        return [url], None
    if not url.endswith(".json"):  # a dataset folder: latest.json names the version folder
        fs, path = fsspec.core.url_to_fs(_join(url, "latest.json"))
        if fs.exists(path) and not fs.exists(posixpath.join(posixpath.dirname(path), "index.json")):
            url = _join(url, _read_json(_join(url, "latest.json"))["version"])
    index_url = url if url.endswith(".json") else _join(url, schema.INDEX_NAME)
    base = url.rsplit("/", 1)[0] if url.endswith(".json") else url
    fs, path = fsspec.core.url_to_fs(index_url)
    if fs.exists(path):
        index = _read_json(index_url)
        schema.validate_index(index, where=index_url)
        return [_join(base, s["name"]) for s in index["shards"]], index
    fs_dir, dir_path = fsspec.core.url_to_fs(base)
    found = sorted(fs_dir.glob(posixpath.join(dir_path, "shard-*.tar")))
    if not found:
        raise FileNotFoundError(
            f"{url!r}: no {schema.INDEX_NAME} and no shard-*.tar files there; pass a folder "
            "holding a dataset, a .tar file or a brace pattern"
        )
    protocol = fs_dir.protocol if isinstance(fs_dir.protocol, str) else fs_dir.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return [prefix + p for p in found], None


def iter_samples(urls: Iterable[str], json_only: bool = False) -> Iterator[dict]:
    """Yield WebDataset-style samples ``{"__key__", "__url__", member: bytes}`` from tars.

    Streams each tar once (works for any fsspec URL). With ``json_only`` the image members
    are skipped without being kept (used by the leakage scan of a training set).
    """
    for url in urls:
        current: dict | None = None
        with fsspec.open(url, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = posixpath.basename(info.name)
                if "." not in base:
                    raise schema.SchemaError(f"{url}: tar member {info.name!r} has no extension")
                key, member = base.split(".", 1)
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                if json_only and member != schema.META_MEMBER:
                    continue
                handle = tar.extractfile(info)
                assert handle is not None
                current[member.lower()] = handle.read()
        if current is not None:
            yield current


# ----------------------------------------------------------------------------- decoding


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 from an 8- or 16-bit PNG or a JPEG."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # PIL raises several unrelated types for corrupt files
        raise schema.SchemaError(f"{where}: cannot decode image ({exc})") from exc
    if img.mode in ("I;16", "I;16B", "I"):
        arr = np.asarray(img).astype(np.uint32) >> 8
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=-1)
    arr = np.asarray(img)
    if arr.dtype == np.uint16:  # 16-bit RGB PNG
        arr = (arr >> 8).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """``(H, W)`` bool: object alpha above one half."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    if arr.ndim == 3:
        arr = arr[..., -1]
    scale = 65535 if arr.dtype == np.uint16 else 255
    return arr.astype(np.float32) > scale / 2


def decode_matid(data: bytes, where: str) -> np.ndarray:
    """``(H, W)`` int32 raw material indices from a 16-bit (or 8-bit) PNG."""
    img = Image.open(io.BytesIO(data))
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise schema.SchemaError(
            f"{where}: material index map must be single-channel, got {arr.shape}"
        )
    return arr.astype(np.int32)


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == size:
        return arr
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    mode_arr = arr.astype(np.uint8) if arr.dtype == bool else arr
    img = Image.fromarray(mode_arr.astype(np.int32) if arr.dtype == np.int32 else mode_arr)
    out = np.asarray(img.resize((size[1], size[0]), resample))
    return out.astype(arr.dtype)


# ----------------------------------------------------------------------------- eval set


@dataclass
class NativeView:
    """One view at its rendered size: image ``(H, W, 3)`` uint8, mask, matid ``(H, W)``."""

    image: np.ndarray
    mask: np.ndarray | None
    matid: np.ndarray | None


@dataclass
class EvalSet:
    """One row per rendered view. Arrays of labels are ``(N,)`` numpy string arrays.

    ``images`` ``(N, H, W, 3)`` uint8; ``masks`` ``(N, H, W)`` bool or None (object alpha);
    ``matids`` ``(N, H, W)`` int32 or None (per-pixel material index; views without one hold
    -1); ``family`` falls back to ``group`` and ``group`` to the material id. ``scene``
    ``(N,)`` bool: the view is of a multi-object material-selection scene (its sample's json
    lists ``scene_materials``), as the renderer recorded it; None when no sample of the set
    says either way (data from elsewhere). ``roughness`` and ``metallic`` ``(N,)`` float: the
    material's ``params.roughness`` (NaN when it has none) and ``params.metallic`` (0 when
    it has none).

    ``native``: per view, the view at its rendered size (``NativeView``) when it is of a
    selection scene rendered larger than ``images`` (a spec's ``[scenes].resolution``), else
    None; empty when no view is. ``images`` holds those views too, resized.
    """

    images: np.ndarray
    masks: np.ndarray | None
    matids: np.ndarray | None
    key: np.ndarray
    view: np.ndarray
    material: np.ndarray
    category: np.ndarray
    group: np.ndarray
    family: np.ndarray
    mesh: np.ndarray
    light: np.ndarray
    scene_materials: list[list[str]] = field(default_factory=list)
    scene: np.ndarray | None = None
    roughness: np.ndarray | None = None
    metallic: np.ndarray | None = None
    native: list[NativeView | None] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray | Sequence[int]) -> EvalSet:
        idx = np.asarray(index)
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif isinstance(value, list):
                rows = [value[i] for i in np.arange(len(self))[idx]] if value else []
                out[f.name] = rows if f.name != "native" or any(rows) else []
            else:
                out[f.name] = value[idx]
        return EvalSet(**out)

    def view_arrays(self, i: int) -> NativeView:
        """View ``i`` at its rendered size when ``native`` holds it, else as stacked."""
        if self.native and self.native[i] is not None:
            return self.native[i]
        pick = [None if a is None else a[i] for a in (self.masks, self.matids)]
        return NativeView(self.images[i], *pick)

    def mean_colour(self) -> np.ndarray:
        """``(N, 3)`` mean sRGB colour in [0, 1], over the object mask when there is one."""
        img = self.images.astype(np.float64) / 255.0
        if self.masks is None:
            return img.mean((1, 2))
        w = self.masks.astype(np.float64)
        w = np.where(w.sum((1, 2), keepdims=True) > 0, w, 1.0)
        return (img * w[..., None]).sum((1, 2)) / w.sum((1, 2))[:, None]

    def has_matid(self) -> np.ndarray:
        """``(N,)`` bool: views with a per-pixel material index map."""
        if self.matids is None:
            return np.zeros(len(self), bool)
        return self.matids.reshape(len(self), -1).max(1) >= 0

    def material_regions(self, ignore: tuple[int, ...] = ()) -> np.ndarray:
        """``(N,)`` number of distinct material indices on each view's valid pixels (inside
        the mask, index >= 0, not in ``ignore``); 0 for views without a matid map."""
        if self.matids is None:
            return np.zeros(len(self), np.int64)
        out = np.zeros(len(self), np.int64)
        for i in range(len(self)):
            valid = (self.matids[i] >= 0) & ~np.isin(self.matids[i], ignore)
            if self.masks is not None:
                valid &= self.masks[i]
            out[i] = np.unique(self.matids[i][valid]).size
        return out

    def usage(self) -> dict[str, set[str]]:
        """IDs this eval set uses: ``{"materials", "groups", "meshes", "lights"}``."""
        materials = set(self.material.tolist())
        for extra in self.scene_materials:
            materials.update(extra)
        return {
            "materials": materials,
            "groups": set(self.group.tolist()),
            "meshes": set(self.mesh.tolist()),
            "lights": set(self.light.tolist()),
        }


def _param(params: object, name: str, default: float) -> float:
    """A numeric material parameter, ``default`` when absent or not a finite number."""
    value = params.get(name) if isinstance(params, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return default


def _scene_materials(meta: dict) -> list[str]:
    """IDs of every material in a multi-material scene (tolerates several layouts)."""
    out = []
    for name in ("materials", "scene_materials"):
        for item in meta.get(name) or []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                out.append(item["id"])
            elif isinstance(item, str):
                out.append(item)
    return out


def _read_pass(
    sample: dict, member: str, decode: Callable[[bytes, str], np.ndarray], where: str
) -> np.ndarray | None:
    """A view's mask or material-index member, decoded at its own size; None if absent."""
    data = sample.get(member)
    if data is None:
        return None
    return decode(data, f"{where}.{member}")


def _stack_or_none(views: list[np.ndarray | None], missing: np.ndarray) -> np.ndarray | None:
    """Stack per-view masks / material indices, ``missing`` for views without one; None if
    no view has one."""
    if all(v is None for v in views):
        return None
    return np.stack([v if v is not None else missing for v in views])


def read_eval_set(
    url: str, image_size: int | None = None, max_samples: int | None = None
) -> EvalSet:
    """Read every view of a dataset (see ``resolve_shards``) into an ``EvalSet``.

    Views whose size differs from ``image_size`` (default: the first object view's size, else
    the first view's) are resized (bilinear for images, nearest for masks and material
    indices); selection-scene views rendered larger are also kept as they are (``native``).
    """
    urls, index = resolve_shards(url)
    fmt = index["image_format"] if index else None
    if fmt == "exr":
        raise schema.SchemaError(
            f"{url}: views are linear EXR; the evaluation reads display-referred jpg/png "
            'views: render the eval set with render.image_format = "jpg" or "png"'
        )
    rows: dict[str, list] = {k: [] for k in ("images", "masks", "matids")}
    labels: dict[str, list] = {
        k: [] for k in ("key", "view", "material", "category", "group", "family", "mesh", "light")
    }
    scene: list[list[str]] = []
    is_scene: list[bool] = []
    params: dict[str, list[float]] = {"roughness": [], "metallic": []}
    size: tuple[int, int] | None = (image_size, image_size) if image_size else None
    n_samples = 0
    for sample in iter_samples(urls):
        if max_samples is not None and n_samples >= max_samples:
            break
        key = sample["__key__"]
        where = f"{sample['__url__']}:{key}"
        meta = schema.validate_sample(sample, image_format=fmt)
        mat = meta["material"]
        group = str(mat.get("group") or mat["id"])
        family = str(mat.get("family") or group)
        for i, view in enumerate(meta["views"]):
            ext = next(e for e in IMAGE_EXTENSIONS if f"view{i}.{e}" in sample) if not fmt else None
            member = schema.view_member(i, fmt) if fmt else f"view{i}.{ext}"
            if member not in sample:
                raise schema.SchemaError(
                    f"{where}: member {member} cannot be read by the evaluation (exr views are "
                    "not supported; render the eval set as jpg or png)"
                )
            img = decode_rgb(sample[member], f"{where}.{member}")
            view_is_scene = bool(meta.get("scene_materials")) or "scene_objects" in view
            rows["images"].append(img)  # resized below, to the first object view's size
            rows["masks"].append(_read_pass(sample, schema.mask_member(i), decode_mask, where))
            rows["matids"].append(_read_pass(sample, schema.matid_member(i), decode_matid, where))
            for name, value in (
                ("key", key),
                ("view", i),
                ("material", mat["id"]),
                ("category", mat["category"]),
                ("group", group),
                ("family", family),
                ("mesh", view["mesh_id"]),
                ("light", view["light_id"]),
            ):
                labels[name].append(value)
            scene.append(_scene_materials(meta))
            is_scene.append(view_is_scene)
            params["roughness"].append(_param(mat.get("params"), "roughness", np.nan))
            params["metallic"].append(_param(mat.get("params"), "metallic", 0.0))
        n_samples += 1
    if not rows["images"]:
        raise ValueError(f"eval data {url!r} holds no samples")
    objects = [img for img, s in zip(rows["images"], is_scene, strict=True) if not s]
    size = size or (objects or rows["images"])[0].shape[:2]
    native = [
        NativeView(img, rows["masks"][n], rows["matids"][n])
        if is_scene[n] and img.shape[0] * img.shape[1] > size[0] * size[1]
        else None
        for n, img in enumerate(rows["images"])
    ]
    rows["images"] = [_resize(img, size, nearest=False) for img in rows["images"]]
    for name in ("masks", "matids"):
        rows[name] = [None if a is None else _resize(a, size, nearest=True) for a in rows[name]]
    masks = _stack_or_none(rows["masks"], np.ones(size, bool))
    matids = _stack_or_none(rows["matids"], np.full(size, -1, np.int32))
    kept = sorted({v.image.shape[0] for v in native if v is not None})
    if kept:
        logger.info("selection views kept at their rendered %s px (others: %d)", kept, size[0])
    logger.info("read %d views of %d samples from %s", len(rows["images"]), n_samples, url)
    return EvalSet(
        images=np.stack(rows["images"]),
        masks=masks,
        matids=matids,
        native=native if kept else [],
        view=np.asarray(labels.pop("view"), dtype=np.int64),
        scene_materials=scene,
        # Renderer-written datasets mark their scenes; a set with no scene anywhere says
        # nothing either way, so the protocol falls back to counting materials per view.
        scene=np.asarray(is_scene, bool) if any(is_scene) else None,
        roughness=np.asarray(params["roughness"], np.float64),
        metallic=np.asarray(params["metallic"], np.float64),
        **{k: np.asarray(v, dtype=str) for k, v in labels.items()},
    )


# ----------------------------------------------------------------------------- leakage

# What a training index lists (``phieat.schema``: a build writes every one); the older names
# after the first are read too.
USAGE_INDEX_FIELDS = {
    "materials": ("materials",),
    "groups": (schema.INDEX_MATERIAL_GROUPS, "groups"),
    "meshes": (schema.INDEX_MESHES, "mesh_ids"),
    "lights": (schema.INDEX_LIGHTS, "light_ids"),
}


def _ids(values: Iterable) -> set[str]:
    out = set()
    for v in values:
        if isinstance(v, dict):
            if "id" in v:
                out.add(str(v["id"]))
        else:
            out.add(str(v))
    return out


def dataset_usage(index_path: str, scan: bool = False) -> dict[str, set[str]]:
    """Materials, material groups, meshes and lights a training dataset used.

    ``index_path`` is an ``index.json`` (or the folder/URL holding it). Sets the index lists
    (``materials``, ``material_groups``, ``meshes``, ``lights``: every build writes them) are
    taken from it; the rest (an older index lacks the last three) are read from the json
    members of the shards it names. ``scan`` reads every shard's json as well and adds what
    it finds to the index lists (``phieat-eval run --scan-train-shards``).
    """
    urls, index = resolve_shards(index_path)
    if index is None:
        raise FileNotFoundError(f"--train-index {index_path!r}: no {schema.INDEX_NAME} found there")
    usage: dict[str, set[str]] = {}
    for name, keys in USAGE_INDEX_FIELDS.items():
        for k in keys:
            if isinstance(index.get(k), list):
                usage[name] = _ids(index[k])
                break
    missing = [name for name in USAGE_INDEX_FIELDS if name not in usage]
    if missing or scan:
        if missing:
            logger.info("%s does not list %s: scanning its shards' json", index_path, missing)
        scanned: dict[str, set[str]] = {name: set() for name in USAGE_INDEX_FIELDS}
        for sample in iter_samples(urls, json_only=True):
            if schema.META_MEMBER not in sample:
                continue
            meta = json.loads(sample[schema.META_MEMBER])
            mat = meta.get("material", {})
            scanned["materials"].add(str(mat.get("id")))
            scanned["materials"].update(_scene_materials(meta))
            scanned["groups"].add(str(mat.get("group") or mat.get("id")))
            for view in meta.get("views", []):
                scanned["meshes"].add(str(view.get("mesh_id")))
                scanned["lights"].add(str(view.get("light_id")))
        for name in USAGE_INDEX_FIELDS:
            usage[name] = usage.get(name, set()) | scanned[name]
    return usage


def check_leakage(
    eval_usage: dict[str, set[str]], train_usage: dict[str, set[str]], train_name: str
) -> None:
    """Raise ``LeakageError`` naming each shared material, group, mesh and light."""
    problems = []
    for name in USAGE_INDEX_FIELDS:
        shared = sorted(eval_usage.get(name, set()) & train_usage.get(name, set()))
        if shared:
            shown = ", ".join(shared[:10]) + (
                f" (+{len(shared) - 10} more)" if len(shared) > 10 else ""
            )
            problems.append(f"{len(shared)} {name}: {shown}")
    if problems:
        raise LeakageError(
            f"the eval set shares with the training dataset {train_name}: "
            + "; ".join(problems)
            + ". Render the eval set from the test split only (materials, meshes and lights), "
            "or pass the right --train-index."
        )
