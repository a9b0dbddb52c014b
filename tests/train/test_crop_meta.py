"""Crop metadata: the renderer's per-view object box and occupancy grid, and the crop sampler.

The sampler places crops from ``augment.ObjectGrid``, built from a view's ``object_bbox`` /
``object_grid`` when its json has them, else from its decoded mask through the same
``schema.object_crop_meta``: a shard with the metadata and the same shard without it give
identical batches for a seed. Against the full-resolution mask the grid's object fraction of a
box is an estimate: off by at most the box's overlap with mixed (neither empty nor full) cells
over its area, plus 1/510 for the rounding to a byte; on rendered-like silhouettes the chosen
crops' true object fraction stays within ``TRUE_FRACTION_TOL`` of ``min_object_fraction``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from phieat import schema
from train import augment, data
from train.config import load_config
from train.data import Loader
from train.samples import _device_images
from train.synthetic import _silhouette, write_synthetic_shards

POOL_TESTS = Path(__file__).resolve().parents[1] / "render" / "pool"
# The grid's estimate of a box's object fraction vs the mask's, on the shapes below.
TRUE_FRACTION_TOL = 0.06


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def _reference_grid(mask: np.ndarray, cells: int = 16) -> tuple[list[int], np.ndarray]:
    """Pixel bbox and occupancy bytes written out from the definition, one cell at a time."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    occupancy = np.zeros((cells, cells), dtype=np.int64)
    for r in range(cells):
        for c in range(cells):
            top, bottom = y0 + r * (y1 - y0) // cells, y0 + (r + 1) * (y1 - y0) // cells
            left, right = x0 + c * (x1 - x0) // cells, x0 + (c + 1) * (x1 - x0) // cells
            area = (bottom - top) * (right - left)
            count = int(mask[top:bottom, left:right].sum())
            if area:
                q = int(np.floor(255 * count / area + 0.5))
                q = max(q, 1) if count else q
                occupancy[r, c] = min(q, 254) if count < area else q
    return [x0, y0, x1, y1], occupancy


def _grid_of(meta: dict) -> np.ndarray:
    values = np.frombuffer(bytes.fromhex(meta[schema.OBJECT_GRID]), dtype=np.uint8)
    side = int(round(len(values) ** 0.5))
    return values.reshape(side, side)


def test_meta_of_hand_made_masks():
    empty = np.zeros((48, 64), dtype=bool)
    assert schema.object_crop_meta(empty) == {schema.OBJECT_BBOX: None, schema.OBJECT_GRID: ""}
    assert augment.ObjectGrid.from_meta(schema.object_crop_meta(empty), 64, 48) is None

    full = np.ones((48, 64), dtype=bool)
    meta = schema.object_crop_meta(full)
    assert meta[schema.OBJECT_BBOX] == [0.0, 0.0, 1.0, 1.0]
    assert meta[schema.OBJECT_GRID] == "ff" * 256

    box = np.zeros((64, 64), dtype=bool)
    box[10:30, 40:60] = True  # off-centre, top right
    meta = schema.object_crop_meta(box)
    assert meta[schema.OBJECT_BBOX] == [40 / 64, 10 / 64, 60 / 64, 30 / 64]
    assert schema.object_bbox_pixels(meta[schema.OBJECT_BBOX], 64, 64) == (40, 10, 60, 30)
    # 20 px over 16 cells: 4 cells are 2 px wide, 12 are 1 px; every one is full.
    assert meta[schema.OBJECT_GRID] == "ff" * 256
    assert len(json.dumps(meta)) < 600

    tiny = np.zeros((64, 64), dtype=bool)
    tiny[5:8, 50:55] = True  # narrower than the grid: most cells are empty (0 px)
    meta = schema.object_crop_meta(tiny)
    assert schema.object_bbox_pixels(meta[schema.OBJECT_BBOX], 64, 64) == (50, 5, 55, 8)
    grid = _grid_of(meta)
    assert int((grid == 255).sum()) == 3 * 5 and int((grid == 0).sum()) == 256 - 15


def test_meta_matches_the_definition_cell_by_cell():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:300]
    shapes = [
        ((xx - 170) ** 2 / 90**2 + (yy - 80) ** 2 / 50**2) <= 1,  # off-centre ellipse
        np.abs(xx - 1.5 * yy) < 12,  # thin diagonal bar
        rng.random((200, 300)) < 0.3,  # noise: every cell mixed
    ]
    for mask in shapes:
        meta = schema.object_crop_meta(mask)
        bbox, occupancy = _reference_grid(mask)
        assert schema.object_bbox_pixels(meta[schema.OBJECT_BBOX], 300, 200) == tuple(bbox)
        assert np.array_equal(_grid_of(meta), occupancy)
    # 0 only for an empty cell and 255 only for a full one, whatever the rounding says.
    mask = np.ones((256, 256), dtype=bool)
    mask[0, 0] = False  # cell (0, 0): 255 of 256 px
    mask[192:208, 192:208] = False
    mask[200, 200] = True  # cell (12, 12): 1 of 256 px
    grid = _grid_of(schema.object_crop_meta(mask))
    assert grid[0, 0] == 254 and grid[12, 12] == 1 and grid[5, 5] == 255


def test_bbox_survives_the_rounding_to_six_decimals():
    rng = np.random.default_rng(1)
    for _ in range(200):
        width, height = (int(v) for v in rng.integers(1, 8000, size=2))
        x0, x1 = sorted(int(v) for v in rng.choice(width + 1, size=2, replace=False))
        y0, y1 = sorted(int(v) for v in rng.choice(height + 1, size=2, replace=False))
        bbox = [round(v / s, 6) for v, s in ((x0, width), (y0, height), (x1, width), (y1, height))]
        assert schema.object_bbox_pixels(bbox, width, height) == (x0, y0, x1, y1)


def _formula_fraction(mask_meta: dict, width: int, height: int, box) -> float:
    """``sum(occupancy * overlap) / (255 * box area)``, straight from the definition."""
    occupancy = _grid_of(mask_meta).astype(np.int64)
    bx0, by0, bx1, by1 = schema.object_bbox_pixels(mask_meta[schema.OBJECT_BBOX], width, height)
    xs = np.array(schema.grid_edges(bx0, bx1, 16))
    ys = np.array(schema.grid_edges(by0, by1, 16))
    x0, y0, x1, y1 = box
    across = (np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0)).clip(min=0)
    down = (np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0)).clip(min=0)
    return int(down @ occupancy @ across) / (255 * (x1 - x0) * (y1 - y0))


def _shapes(size: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = {f"mesh{m}": _silhouette(m, size) for m in range(4)}
    out["small_offcentre"] = ((xx - 0.8) ** 2 + (yy - 0.25) ** 2) <= 0.08**2
    radius = np.hypot(xx - 0.45, yy - 0.55)
    out["ring"] = (radius > 0.2) & (radius < 0.3)
    out["two_blobs"] = (np.hypot(xx - 0.2, yy - 0.2) < 0.12) | (np.hypot(xx - 0.8, yy - 0.75) < 0.1)
    return out


def test_grid_fraction_is_the_formula_and_bounded_by_the_mixed_cells():
    rng = np.random.default_rng(2)
    for name, mask in _shapes(96).items():
        meta = schema.object_crop_meta(mask)
        grid = augment.ObjectGrid.from_meta(meta, 96, 96)
        occupancy = _grid_of(meta)
        bx0, by0, bx1, by1 = schema.object_bbox_pixels(meta[schema.OBJECT_BBOX], 96, 96)
        xs, ys = schema.grid_edges(bx0, bx1, 16), schema.grid_edges(by0, by1, 16)
        mixed = np.zeros_like(mask)
        for r, c in zip(*np.nonzero((occupancy > 0) & (occupancy < 255)), strict=True):
            mixed[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = True
        for _ in range(300):
            x0, x1 = sorted(int(v) for v in rng.choice(97, size=2, replace=False))
            y0, y1 = sorted(int(v) for v in rng.choice(97, size=2, replace=False))
            box = (x0, y0, x1, y1)
            estimate = grid.fraction(box)
            assert estimate == _formula_fraction(meta, 96, 96, box), (name, box)
            truth = mask[y0:y1, x0:x1].mean()
            bound = mixed[y0:y1, x0:x1].mean() + 1 / 510
            assert abs(estimate - truth) <= bound + 1e-12, (name, box, estimate, truth)


def test_centres_fall_in_occupied_cells_and_on_a_rectangle_object():
    rng = np.random.default_rng(3)
    rect = np.zeros((64, 64), dtype=bool)
    rect[40:64, 0:24] = True
    grid = augment.ObjectGrid.from_mask(rect)
    points = {grid.centre(rng) for _ in range(3000)}
    assert all(rect[y, x] for y, x in points)
    assert len(points) > 0.9 * rect.sum()  # the draws reach the whole object
    ring = _shapes(128)["ring"]
    meta = schema.object_crop_meta(ring)
    grid = augment.ObjectGrid.from_meta(meta, 128, 128)
    occupancy = _grid_of(meta)
    bx0, by0, bx1, by1 = schema.object_bbox_pixels(meta[schema.OBJECT_BBOX], 128, 128)
    xs, ys = schema.grid_edges(bx0, bx1, 16), schema.grid_edges(by0, by1, 16)
    hits = 0
    for _ in range(3000):
        y, x = grid.centre(rng)
        row = int(np.searchsorted(ys, y, side="right")) - 1
        col = int(np.searchsorted(xs, x, side="right")) - 1
        assert occupancy[row, col] > 0
        hits += bool(ring[y, x])
    assert hits > 0.8 * 3000  # mostly on the object itself, not its hole


@pytest.mark.parametrize("size, scale", [(64, (0.1, 0.35)), (256, (0.05, 0.32))])
def test_crops_stay_on_the_object_within_the_stated_tolerance(size, scale):
    rng = np.random.default_rng(4)
    for name, mask in _shapes(size).items():
        grid = augment.ObjectGrid.from_mask(mask)
        for _ in range(300):
            box = augment.crop_box(rng, size, size, scale, grid, 0.5, tries=10)
            x0, y0, x1, y1 = box
            truth = mask[y0:y1, x0:x1].mean()
            assert abs(grid.fraction(box) - truth) <= TRUE_FRACTION_TOL, (name, box)
            if grid.fraction(box) >= 0.5:
                assert truth >= 0.5 - TRUE_FRACTION_TOL, (name, box)


# ----------------------------------------------------------------------------- the loader


def with_crop_meta(shards: list[str], out: Path, damage_masks: bool = False) -> list[str]:
    """Copies of ``shards`` whose json lists every view's crop metadata, computed from its mask;
    ``damage_masks`` replaces the mask members with bytes no decoder reads."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for url in shards:
        with tarfile.open(url) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
        files = dict(members)
        target = out / Path(url).name
        with tarfile.open(target, "w") as dst:
            for name, payload in members:
                key, _, member = name.partition(".")
                if member == schema.META_MEMBER:
                    meta = json.loads(payload)
                    for v, view in enumerate(meta["views"]):
                        mask_png = files[f"{key}.{schema.mask_member(v)}"]
                        mask = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L")) > 127
                        view.update(schema.object_crop_meta(mask))
                    schema.validate_meta(meta, key)
                    payload = json.dumps(meta).encode()
                elif member.endswith(".mask.png") and damage_masks:
                    payload = b"not a png"
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                dst.addfile(info, io.BytesIO(payload))
        copies.append(str(target))
    return copies


@pytest.fixture(scope="module")
def meta_shards(tmp_path_factory) -> tuple[list[str], list[str]]:
    """(old-format shards: masks only, copies with crop metadata and unreadable masks)."""
    old = write_synthetic_shards(
        tmp_path_factory.mktemp("old"), materials=12, views=4, size=64, per_shard=3,
        crop_meta=False,
    )  # fmt: skip
    return old, with_crop_meta(old, tmp_path_factory.mktemp("meta"), damage_masks=True)


def _cfg(*extra: str):
    base = [
        "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=4", 'data.index=""',
        "data.error_policy=raise", "crops.global_size=32", "crops.local_size=16",
        "crops.local_per_view=2", *extra,
    ]  # fmt: skip
    return load_config(None, base)


def _batches(shards: list[str], n: int, *extra: str, seed: int = 11) -> list[dict]:
    cfg = _cfg(*extra)
    loader = iter(Loader(shards, cfg.data, cfg.crops, 8, seed=seed))
    return [next(loader) for _ in range(n)]


def _assert_same(a: dict, b: dict) -> None:
    assert a["keys"] == b["keys"]
    for name, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[name]), name
    if "images" in a:
        for name in ("bytes", "lengths"):
            assert torch.equal(a["images"][name], b["images"][name]), name


def _spy_masks(monkeypatch) -> list[int]:
    calls: list[int] = []
    from_mask = augment.ObjectGrid.from_mask.__func__

    def spy(cls, mask):
        calls.append(1)
        return from_mask(cls, mask)

    monkeypatch.setattr(augment.ObjectGrid, "from_mask", classmethod(spy))
    return calls


@pytest.mark.parametrize(
    "extra", [(), ("crops.on_device=true", "crops.decode_on_device=true")], ids=["worker", "device"]
)
def test_crops_from_meta_equal_crops_from_the_mask(meta_shards, monkeypatch, extra):
    old, new = meta_shards
    calls = _spy_masks(monkeypatch)
    from_mask = _batches(old, 3, *extra)
    assert len(calls) >= 3 * 4 * 2  # two decoded views per sample
    del calls[:]
    # The masks of the metadata shards cannot be decoded: reading one would raise.
    from_meta = _batches(new, 3, *extra)
    assert calls == []
    for a, b in zip(from_mask, from_meta, strict=True):
        _assert_same(a, b)
    again = _batches(new, 3, *extra)
    for a, b in zip(from_meta, again, strict=True):
        _assert_same(a, b)
    if extra:  # the device path cuts the boxes the worker drew
        images = _device_images(from_meta[0]["images"], "cpu")
        assert images.shape[0] == 2 * len(from_meta[0]["keys"])


def test_resume_on_meta_shards_gives_the_same_next_batches(meta_shards):
    _, new = meta_shards
    cfg = _cfg("data.num_workers=2")
    reference = list(islice(Loader(new, cfg.data, cfg.crops, 8, seed=3), 5))
    first = Loader(new, cfg.data, cfg.crops, 8, seed=3)
    list(islice(first, 3))  # odd: the next batch comes from the second worker
    resumed = Loader(new, cfg.data, cfg.crops, 8, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for want, got in zip(reference[3:], resumed, strict=False):
        _assert_same(want, got)


def _raw_sample(shard: str, key: str) -> dict:
    """One sample of a shard as the loader's tar reader groups it."""
    sample = {"__key__": key}
    with tarfile.open(shard) as tar:
        for member in tar:
            name, _, suffix = member.name.partition(".")
            if name == key:
                sample[suffix] = tar.extractfile(member).read()
    return sample


def test_old_format_sample_loads_through_its_mask(meta_shards, monkeypatch):
    old = meta_shards[0]
    sample = _raw_sample(old[0], "synth-000__g0000")
    meta = json.loads(sample["json"])
    assert schema.OBJECT_BBOX not in meta["views"][0]
    schema.validate_meta(meta, "synth-000__g0000")  # still valid without the new fields
    calls = _spy_masks(monkeypatch)
    batch = _batches(old, 1)[0]
    assert len(calls) == 2 * len(batch["keys"])
    assert torch.isfinite(batch["global"]).all()
    # Without metadata a damaged mask is still reported as one.
    cfg = _cfg()
    damaged = {k: (b"not a png" if k.endswith("mask.png") else v) for k, v in sample.items()}
    with pytest.raises(data.DataError, match=r"mask\.png cannot be decoded"):
        data.make_sample(damaged, np.random.default_rng(0), cfg.data, cfg.crops, 8)


def test_views_without_object_get_plain_crops(meta_shards):
    """An empty mask's metadata (null box) gives the crops of a view without any mask."""
    sample = _raw_sample(meta_shards[0][0], "synth-000__g0000")
    meta = json.loads(sample["json"])
    for view in meta["views"]:
        view.update(schema.object_crop_meta(np.zeros((64, 64), dtype=bool)))
    with_meta = dict(sample, json=json.dumps(meta).encode())
    without = {k: v for k, v in sample.items() if not k.endswith("mask.png")}
    cfg = _cfg()
    a = data.make_sample(with_meta, np.random.default_rng(5), cfg.data, cfg.crops, 8)
    b = data.make_sample(without, np.random.default_rng(5), cfg.data, cfg.crops, 8)
    for name in ("global", "local"):
        assert all(torch.equal(x, y) for x, y in zip(a[name], b[name], strict=True))


# ----------------------------------------------------------------------------- the writer


def test_render_shard_writes_crop_meta_into_every_view(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(POOL_TESTS))
    import pool_fakes

    from render import storage
    from render.plan import load_catalogs, make_plan
    from render.spec import load_spec
    from render.writer import render_shard

    class OffCentre(pool_fakes.FakeSession):
        """The fake renderer with an off-centre object mask, shifted per view."""

        def render_view(self, job: dict):
            view = super().render_view(job)
            if view.mask is not None:
                res = job["render"]["resolution"]
                mask = np.zeros((res, res), dtype=np.uint8)
                mask[2 + job["view"] : res // 2, res // 2 : res - 3] = 255
                view.mask = pool_fakes._png(mask)
            return view

    catalogs = tmp_path / "catalogs"
    pool_fakes.write_catalogs(catalogs, n_materials=3)
    for passes, expect in ((["mask"], True), ([], False)):
        url = f"memory://crop-meta/{len(passes)}"
        spec = load_spec(
            pool_fakes.write_spec(
                catalogs, url, dataset={"shard_size": 3}, render={"passes": passes}
            )
        )
        shard = make_plan(spec, load_catalogs(spec)).shards[0]
        render_shard(OffCentre(), shard.to_dict(), url, max_retries=0)
        data_bytes = storage.read_bytes(storage.join(url, shard.to_dict()["name"]))
        with tarfile.open(fileobj=io.BytesIO(data_bytes)) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        metas = {n: json.loads(v) for n, v in members.items() if n.endswith(".json")}
        assert metas
        for name, meta in metas.items():
            key = name[: -len(".json")]
            schema.validate_meta(meta, key)
            for v, view in enumerate(meta["views"]):
                if not expect:
                    assert schema.OBJECT_BBOX not in view and schema.OBJECT_GRID not in view
                    continue
                png = members[f"{key}.{schema.mask_member(v)}"]
                mask = np.asarray(Image.open(io.BytesIO(png)).convert("L")) > 127
                assert {k: view[k] for k in (schema.OBJECT_BBOX, schema.OBJECT_GRID)} == (
                    schema.object_crop_meta(mask)
                )
                res = mask.shape[1]
                assert schema.object_bbox_pixels(view[schema.OBJECT_BBOX], res, res) == (
                    res // 2, 2 + v, res - 3, res // 2,
                )  # fmt: skip


def test_schema_module_stays_light():
    """``object_crop_meta`` imports numpy only when called: importing the contract does not."""
    code = "import sys, phieat.schema; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
