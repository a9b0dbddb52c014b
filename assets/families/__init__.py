"""Procedural material families: seeded parameter samplers with stable IDs.

A family (``wood``, ``marble``, ``metal-brushed`` ...) declares its parameters: numeric
ranges (roughness, bump strength, feature sizes in metres, coat, sheen, anisotropy,
subsurface ...), colours (sampled in HSV, stored as linear RGB) and discrete choices. A
material is ``(family, seed)``:

* seeds come in *variants* of ``SEEDS_PER_VARIANT``: a variant draws every parameter, and
  each seed of it perturbs the numeric ones a little. Siblings are near-duplicates, so they
  share a ``group`` and the split never puts them on both sides;
* the ID is ``<family>-<seed:04d>-<hash6>`` where ``hash6`` is a hash of the parameters,
  so the same ID always means the same parameters (and, rendered, the same pixels);
* randomness comes only from ``numpy.random.default_rng`` seeded by a hash of
  ``(family, variant)`` / ``(family, seed)``: adding a family never changes another.

``material_entry(family, seed)`` gives a catalog entry; ``generate(n_per_family)`` the
built-in catalog; ``diversity_report(entries)`` the check that non-colour parameters vary
and no two materials are closer than a minimum distance.

The package, by part:

* ``params``: the parameter kinds (``Num``, ``Color``, ``Choice``) and ``Family``;
* ``metals``, ``mineral``, ``organic``, ``synthetic``: the families, by kind of material;
* ``sampling``: the ``FAMILIES`` registry, seeding, variants, IDs, ``generate``;
* ``diversity``: ``parameter_vector`` and ``diversity_report``.
"""

from __future__ import annotations

from assets.families.diversity import diversity_report, parameter_vector
from assets.families.metals import METALS
from assets.families.params import (
    JITTER,
    OFFSET,
    PLACEMENT,
    ROT,
    Choice,
    Color,
    Family,
    Num,
    hex_palette,
)
from assets.families.sampling import (
    DEFAULT_PER_FAMILY,
    FAMILIES,
    LICENCE,
    MIN_DISTANCE,
    SEEDS_PER_VARIANT,
    families_table,
    generate,
    material_entry,
    material_id,
    normalised_vector,
    sample_params,
)
from assets.families.sampling import _variant as _variant  # its cache is cleared by tests

__all__ = [
    "DEFAULT_PER_FAMILY",
    "FAMILIES",
    "JITTER",
    "LICENCE",
    "METALS",
    "MIN_DISTANCE",
    "OFFSET",
    "PLACEMENT",
    "ROT",
    "SEEDS_PER_VARIANT",
    "Choice",
    "Color",
    "Family",
    "Num",
    "diversity_report",
    "families_table",
    "generate",
    "hex_palette",
    "material_entry",
    "material_id",
    "normalised_vector",
    "parameter_vector",
    "sample_params",
]
