"""Procedural family samplers: stable IDs, >= 5,000 distinct materials, real variety."""

from __future__ import annotations

import numpy as np
import pytest

from assets import families
from phieat.schema import validate_material_id

CATEGORIES = {
    "ceramic",
    "concrete",
    "fabric",
    "ground",
    "leather",
    "marble",
    "metal",
    "plaster",
    "plastic",
    "stone",
    "terracotta",
    "wood",
}


@pytest.fixture(scope="module")
def catalog():
    return families.generate()


def test_enough_distinct_materials_and_families(catalog):
    ids = [e["id"] for e in catalog]
    assert len(ids) >= 5000 and len(set(ids)) == len(ids)
    assert len(families.FAMILIES) >= 12
    assert CATEGORIES <= {f.category for f in families.FAMILIES.values()}
    for material_id in ids[:50] + ids[-50:]:
        validate_material_id(material_id)


def test_same_id_same_params_and_independent_of_other_families():
    a = families.material_entry("marble", 17)
    families._variant.cache_clear()
    b = families.material_entry("marble", 17)
    assert a == b
    assert a["id"].startswith("marble-0017-")
    assert families.generate(3, ["marble"])[0]["params"] == families.sample_params("marble", 0)


def test_siblings_share_a_group_and_variants_do_not():
    a, b = families.material_entry("wood", 0), families.material_entry("wood", 1)
    c = families.material_entry("wood", families.SEEDS_PER_VARIANT)
    assert a["group"] == b["group"] != c["group"]
    assert a["params"] != b["params"]


def test_non_colour_parameters_vary_and_materials_are_apart(catalog):
    report = families.diversity_report(catalog)
    assert report["problems"] == []
    for name, info in report["families"].items():
        assert info["min_distance"] >= families.MIN_DISTANCE, name
        assert info["min_spread"] >= 0.1, name
    assert len(report["families"]) == len(families.FAMILIES)


def test_diversity_check_catches_recolourings():
    base = families.material_entry("plastic", 0)
    clones = []
    for i in range(10):
        params = dict(base["params"], base_color=[0.1 * i, 0.2, 0.3])
        clones.append(dict(base, id=f"plastic-clone-{i}", group=f"clone-{i}", params=params))
    problems = families.diversity_report(clones)["problems"]
    assert any("apart" in p for p in problems)
    assert any("barely vary" in p for p in problems)


def test_physical_parameters_span_their_ranges(catalog):
    metals = [e for e in catalog if e["family"] == "metal-polished"]
    rough = np.array([e["params"]["roughness"] for e in metals])
    assert rough.min() < 0.04 and rough.max() > 0.15
    cars = [e["params"]["coat"] for e in catalog if e["family"] == "car-paint"]
    assert min(cars) >= 0.85
    fabrics = [e["params"]["sheen"] for e in catalog if e["family"] == "fabric"]
    assert max(fabrics) - min(fabrics) > 0.5


def test_bad_family_or_seed_raise():
    with pytest.raises(KeyError, match="unknown material family 'velvet'"):
        families.sample_params("velvet", 0)
    with pytest.raises(ValueError, match="non-negative"):
        families.sample_params("wood", -1)
