"""The family registry and the sampler: seeding, variants, parameters, IDs, catalog entries.

``FAMILIES`` maps each family name to its ``Family`` (defined by kind of material in
``metals``, ``mineral``, ``organic`` and ``synthetic``); its order is the order families are
listed in summaries. ``sample_params(family, seed)`` draws a material's parameters,
``material_entry`` wraps them in a catalog entry and ``generate`` builds the whole catalog.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import numpy as np

from assets.families import metals, mineral, organic, synthetic
from assets.families.params import Color, Family, Num
from phieat.schema import hash_obj

SEEDS_PER_VARIANT = 4
DEFAULT_PER_FAMILY = 360
MIN_DISTANCE = 0.02  # minimum normalised distance between two materials of a family
LICENCE = "CC0-1.0"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        organic.WOOD,
        mineral.MARBLE,
        metals.METAL_BRUSHED,
        metals.METAL_POLISHED,
        metals.METAL_OXIDISED,
        synthetic.PAINTED_METAL,
        synthetic.CAR_PAINT,
        synthetic.PLASTIC,
        synthetic.RUBBER,
        mineral.CERAMIC,
        mineral.TERRACOTTA,
        mineral.CONCRETE,
        mineral.PLASTER,
        mineral.GRANITE,
        mineral.SANDSTONE,
        mineral.BRICK,
        organic.FABRIC,
        organic.LEATHER,
        organic.GROUND,
    ]
}


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _round(value):
    if isinstance(value, float):
        return round(value, 5)
    return value


def normalised_vector(fam: Family, params: dict) -> np.ndarray:
    """``fam``'s non-colour numeric parameters in ``params``, each normalised by its range."""
    return np.array([fam.params[k].normalise(params[k]) for k in fam.numeric()])


@functools.lru_cache(maxsize=4096)
def _variant(family: str, variant: int) -> tuple[dict, ...]:
    """All seeds of one variant: the variant's draw and its perturbed siblings.

    A sibling is redrawn (from the same deterministic stream) until it is at least
    ``2 * MIN_DISTANCE`` from every earlier seed of the variant, so near-duplicates are
    still measurably different materials.
    """
    fam = FAMILIES[family]
    base_rng = _rng("phieat-family", family, variant)
    base = {name: spec.sample(base_rng) for name, spec in fam.params.items()}
    seeds = [base]
    for k in range(1, SEEDS_PER_VARIANT):
        rng = _rng("phieat-seed", family, variant * SEEDS_PER_VARIANT + k)
        for _attempt in range(50):
            params = {}
            for name, spec in fam.params.items():
                if isinstance(spec, Num):
                    params[name] = spec.perturb(base[name], rng)
                elif isinstance(spec, Color):
                    # Siblings keep the variant's colour but shift its brightness a little.
                    shade = float(rng.uniform(0.9, 1.1))
                    params[name] = [round(min(1.0, c * shade), 4) for c in base[name]]
                else:
                    params[name] = base[name]
            vec = normalised_vector(fam, params)
            far = all(
                np.sqrt(((vec - normalised_vector(fam, other)) ** 2).mean()) >= 2 * MIN_DISTANCE
                for other in seeds
            )
            if far:
                break
        seeds.append(params)
    return tuple({name: _round(value) for name, value in p.items()} for p in seeds)


def sample_params(family: str, seed: int) -> dict:
    """The parameters of ``(family, seed)``: deterministic, independent of other families."""
    if family not in FAMILIES:
        raise KeyError(f"unknown material family {family!r}; known: {sorted(FAMILIES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = _variant(family, seed // SEEDS_PER_VARIANT)[seed % SEEDS_PER_VARIANT]
    return {k: (list(v) if isinstance(v, list) else v) for k, v in params.items()}


def material_id(family: str, seed: int, params: dict | None = None) -> str:
    params = sample_params(family, seed) if params is None else params
    return f"{family}-{seed:04d}-{hash_obj(params, 6)}"


def material_entry(family: str, seed: int) -> dict:
    """A catalog entry for ``(family, seed)``; ``split`` is filled in by the split step."""
    params = sample_params(family, seed)
    fam = FAMILIES[family]
    return {
        "id": material_id(family, seed, params),
        "category": fam.category,
        "source": "procedural",
        "family": family,
        "seed": seed,
        "params": params,
        "group": f"{family}-v{seed // SEEDS_PER_VARIANT:04d}",
        "licence": LICENCE,
        "split": "train",
    }


def generate(
    per_family: int = DEFAULT_PER_FAMILY, families: Iterable[str] | None = None
) -> list[dict]:
    """The built-in procedural catalog: ``per_family`` seeds of every family, sorted by id."""
    names = list(families) if families is not None else list(FAMILIES)
    entries = [material_entry(f, s) for f in names for s in range(per_family)]
    return sorted(entries, key=lambda e: e["id"])


def families_table() -> list[tuple[str, str, str]]:
    """(family, category, description) rows for summaries and docs."""
    return [(f.name, f.category, f.description) for f in FAMILIES.values()]
