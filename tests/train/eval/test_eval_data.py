"""Reading eval shards into arrays, and the leakage check against a training index."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from phieat import schema
from train.eval.data import (
    LeakageError,
    check_leakage,
    dataset_usage,
    read_eval_set,
    resolve_shards,
)


@pytest.fixture
def eval_dir(tmp_path, dataset_writer, material_factory):
    mats = [material_factory(i, prefix="ev") for i in range(10)]
    return dataset_writer(
        tmp_path / "eval",
        mats,
        ["m-a", "m-b", "m-c"],
        ["l-a", "l-b"],
        views=3,
        size=24,
        per_shard=4,
    )


def test_read_eval_set_rows_and_labels(eval_dir):
    es = read_eval_set(str(eval_dir))
    assert len(es) == 30 and es.images.shape == (30, 24, 24, 3) and es.images.dtype == np.uint8
    assert es.masks is not None and es.masks.shape == (30, 24, 24) and es.matids is None
    assert list(es.view[:3]) == [0, 1, 2] and es.material[0] == "ev-000"
    assert es.key[0] == "ev-000__g0000" and es.category[1] == "wood"
    assert es.family[0] == "fam-0" and es.group[0] == "ev-grp-000"
    assert set(es.mesh) <= {"m-a", "m-b", "m-c"} and set(es.light) <= {"l-a", "l-b"}
    colour = es.mean_colour()
    assert colour.shape == (30, 3) and 0 <= colour.min() and colour.max() <= 1
    sub = es.subset(es.material == "ev-003")
    assert len(sub) == 3 and sub.images.shape[0] == 3 and len(sub.scene_materials) == 3


def test_read_eval_set_url_forms_and_resize(eval_dir):
    urls, index = resolve_shards(str(eval_dir))
    assert len(urls) == 3 and index is not None
    one = read_eval_set(str(eval_dir / "shard-000001.tar"))
    assert len(one) == 12 and one.material[0] == "ev-004"
    brace = read_eval_set(str(eval_dir) + "/shard-{000000..000001}.tar", image_size=16)
    assert len(brace) == 24 and brace.images.shape[1:3] == (16, 16)
    assert brace.masks.shape[1:] == (16, 16)
    capped = read_eval_set(str(eval_dir / schema.INDEX_NAME), max_samples=2)
    assert len(capped) == 6
    (eval_dir / schema.INDEX_NAME).unlink()
    assert len(resolve_shards(str(eval_dir))[0]) == 3


def test_read_selection_views_with_matid(tmp_path, dataset_writer, material_factory):
    mats = [material_factory(i) for i in range(3)]
    d = dataset_writer(tmp_path / "sel", mats, ["m"], ["l"], views=2, size=16, selection=True)
    es = read_eval_set(str(d))
    assert es.matids is not None and es.matids.dtype == np.int32
    assert es.has_matid().all() and set(np.unique(es.matids)) == {0, 1, 2}
    assert (es.matids[:, 4:, :8] == 1).all() and (es.matids[:, :4] == 0).all()
    # The renderer marks scenes in the json; the reader keeps that, with the material params.
    assert es.scene is not None and es.scene.all()
    assert es.roughness.tolist() == [0.1, 0.1, 0.45, 0.45, 0.8, 0.8]
    assert es.metallic.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_sets_without_scene_metadata_say_nothing(eval_dir):
    es = read_eval_set(str(eval_dir))
    assert es.scene is None


def test_missing_member_names_the_sample(tmp_path, eval_dir):
    bad = tmp_path / "bad.tar"
    with tarfile.open(eval_dir / "shard-000000.tar") as src, tarfile.open(bad, "w") as dst:
        for info in src.getmembers():
            if info.name.endswith("view1.jpg") and info.name.startswith("ev-001"):
                continue
            dst.addfile(info, src.extractfile(info))
    with pytest.raises(schema.SchemaError, match="ev-001__g0000.*view1"):
        read_eval_set(str(bad))


def test_corrupt_image_names_the_member(tmp_path, eval_dir):
    bad = tmp_path / "corrupt.tar"
    with tarfile.open(eval_dir / "shard-000000.tar") as src, tarfile.open(bad, "w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            if info.name == "ev-002__g0000.view2.jpg":
                data = b"not a jpeg"
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    with pytest.raises(schema.SchemaError, match=r"ev-002__g0000\.view2\.jpg: cannot decode"):
        read_eval_set(str(bad))


def test_sample_without_json_is_refused(tmp_path):
    bad = tmp_path / "nojson.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("x-1__g0000.view0.jpg")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"nope"))
    with pytest.raises(schema.SchemaError, match="json"):
        read_eval_set(str(bad))


def test_no_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        resolve_shards(str(tmp_path))


def test_leakage_check_names_shared_ids(tmp_path, eval_dir, dataset_writer, material_factory):
    es = read_eval_set(str(eval_dir))
    mats = [material_factory(i, prefix="tr") for i in range(4)]
    clean = dataset_writer(tmp_path / "clean", mats, ["t-m"], ["t-l"], views=2, size=16)
    check_leakage(es.usage(), dataset_usage(str(clean / schema.INDEX_NAME)), "clean")

    shared_mesh = dataset_writer(tmp_path / "mesh", mats, ["m-b"], ["t-l"], views=2, size=16)
    with pytest.raises(LeakageError, match=r"1 meshes: m-b"):
        check_leakage(es.usage(), dataset_usage(str(shared_mesh)), "mesh")

    leaky = [material_factory(3, prefix="ev")] + mats
    shared = dataset_writer(tmp_path / "mat", leaky, ["t-m"], ["l-a"], views=2, size=16)
    with pytest.raises(LeakageError) as info:
        check_leakage(es.usage(), dataset_usage(str(shared)), "mat")
    text = str(info.value)
    assert "materials: ev-003" in text and "groups: ev-grp-003" in text and "lights: l-a" in text


def test_leakage_uses_index_lists_without_scanning(
    tmp_path, eval_dir, dataset_writer, material_factory
):
    mats = [material_factory(i, prefix="tr") for i in range(2)]
    listed = dataset_writer(
        tmp_path / "listed",
        mats,
        ["t-m"],
        ["t-l"],
        views=2,
        size=16,
        index_extra={"meshes": [{"id": "m-c"}], "lights": ["t-l"], "material_groups": ["g"]},
    )
    for shard in listed.glob("shard-*.tar"):
        shard.write_bytes(b"not a tar: the index must be enough")
    usage = dataset_usage(str(listed))
    assert usage["meshes"] == {"m-c"} and usage["groups"] == {"g"}
    with pytest.raises(LeakageError, match="m-c"):
        check_leakage(read_eval_set(str(eval_dir)).usage(), usage, "listed")


def test_decoders_handle_16_bit_and_exr_is_refused(tmp_path, eval_dir):
    from PIL import Image

    from train.eval.data import decode_matid, decode_rgb

    grey16 = (np.arange(16 * 16).reshape(16, 16) * 250).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    rgb = decode_rgb(buf.getvalue(), "x")
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert rgb[-1, -1, 0] == grey16[-1, -1] >> 8
    assert decode_matid(buf.getvalue(), "x")[-1, -1] == grey16[-1, -1]
    index = json.loads((eval_dir / schema.INDEX_NAME).read_text())
    index["image_format"] = "exr"
    (eval_dir / schema.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(schema.SchemaError, match="image_format"):
        read_eval_set(str(eval_dir))
