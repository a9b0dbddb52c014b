"""Dataset specs are strict: unknown keys, wrong types and bad ranges name the key to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from render.spec import SpecError, load_spec, replace_build

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


BASE = '[dataset]\nname = "t"\noutput = "out/t"\n'


def test_defaults_and_catalog_paths_resolve_beside_the_spec(tmp_path):
    spec = load_spec(_write(tmp_path, BASE))
    assert spec.dataset.views == 4 and spec.render.image_format == "jpg"
    assert spec.catalog_path("materials") == tmp_path / "materials.jsonl"
    assert spec.catalogs.split == ["train"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("[render]\nsampels = 4\n", "[render].sampels (did you mean 'samples'?)"),
        ("[rendr]\nsamples = 4\n", "[rendr]"),
        ('[render]\nsamples = "many"\n', "[render].samples must be an integer"),
        ("[render]\ndenoise = 1\n", "[render].denoise must be true or false"),
        ('[render]\nimage_format = "webp"\n', "[render].image_format"),
        ('[render]\npasses = ["depth"]\n', "[render].passes"),
        ("[camera]\ndistance = [3.0, 2.0]\n", "[camera].distance"),
        ('[catalogs]\nsplit = "training"\n', "[catalogs].split"),
        ("[build]\nmaterial_timeout_s = -1\n", "[build].material_timeout_s must be >= 0"),
        ('[build]\nmaterial_timeout_s = "1m"\n', "[build].material_timeout_s must be a number"),
        ("[build]\nmaterial_timeout = 60\n", "did you mean 'material_timeout_s'?"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, extra, needle):
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, BASE + extra))
    assert needle in str(info.value)
    assert "s.toml" in str(info.value)


def test_views_must_be_at_least_two(tmp_path):
    with pytest.raises(SpecError, match=r"\[dataset\].views must be >= 2"):
        load_spec(_write(tmp_path, BASE + "views = 1\n"))


def test_missing_required_key(tmp_path):
    with pytest.raises(SpecError, match="required key 'output'"):
        load_spec(_write(tmp_path, '[dataset]\nname = "t"\n'))


def test_overrides_parse_toml_values(tmp_path):
    spec = load_spec(
        _write(tmp_path, BASE),
        [
            "render.samples=3",
            'render.passes=["mask"]',
            "dataset.output=memory://x",
            "catalogs.split=val",
        ],
    )
    assert spec.render.samples == 3 and spec.render.passes == ["mask"]
    assert spec.dataset.output == "memory://x" and spec.catalogs.split == ["val"]
    with pytest.raises(SpecError, match="section.key=value"):
        load_spec(_write(tmp_path, BASE), ["samples=3"])
    with pytest.raises(SpecError, match=r"\[render\].nope"):
        load_spec(_write(tmp_path, BASE), ["render.nope=1"])


def test_version_hash_ignores_build_and_output_but_not_render(tmp_path):
    spec = load_spec(_write(tmp_path, BASE))
    same = load_spec(_write(tmp_path, BASE.replace("out/t", "s3://b/t")), ["build.workers=3"])
    other = load_spec(_write(tmp_path, BASE), ["render.samples=7"])
    assert spec.spec_hash() == same.spec_hash() != other.spec_hash()
    assert replace_build(spec, workers=4).build.workers == 4
    with pytest.raises(SpecError, match=r"\[build\].threads_per_worker"):
        replace_build(spec, threads_per_worker=0)


@pytest.mark.parametrize("name", ["tiny", "demo", "full"])
def test_shipped_manifests_load(name):
    spec = load_spec(MANIFESTS / f"{name}.toml")
    assert spec.dataset.name == name
    if name == "full":
        assert spec.dataset.views >= 8 and spec.dataset.max_materials == 0  # every material
