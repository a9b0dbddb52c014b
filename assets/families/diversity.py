"""The diversity check of a procedural catalog: parameters spread, materials stay apart."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from assets.families.sampling import FAMILIES, MIN_DISTANCE, normalised_vector


def parameter_vector(entry: dict) -> np.ndarray:
    """Non-colour numeric parameters of an entry, each normalised to [0, 1] by its range."""
    return normalised_vector(FAMILIES[entry["family"]], entry["params"])


def diversity_report(
    entries: Iterable[dict], min_distance: float = MIN_DISTANCE, min_spread: float = 0.1
) -> dict:
    """Check variety per family: every non-colour numeric parameter must spread (std of
    its normalised value >= ``min_spread``) and no two materials may be closer than
    ``min_distance`` (RMS distance of normalised non-colour parameters).

    Returns ``{"families": {name: {...}}, "problems": [text, ...]}``; no problems = passes.
    """
    by_family: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("source") == "procedural" and entry.get("family") in FAMILIES:
            by_family.setdefault(entry["family"], []).append(entry)
    report: dict = {"families": {}, "problems": []}
    for name, items in sorted(by_family.items()):
        vecs = np.stack([parameter_vector(e) for e in items])
        keys = FAMILIES[name].numeric()
        spread = vecs.std(axis=0) if len(items) > 1 else np.zeros(len(keys))
        info = {"materials": len(items), "parameters": len(keys)}
        if len(items) > 1:
            diff = vecs[:, None, :] - vecs[None, :, :]
            dist = np.sqrt((diff**2).mean(-1))
            np.fill_diagonal(dist, np.inf)
            i, j = np.unravel_index(np.argmin(dist), dist.shape)
            info["min_distance"] = round(float(dist[i, j]), 4)
            info["closest_pair"] = [items[i]["id"], items[j]["id"]]
            if dist[i, j] < min_distance:
                report["problems"].append(
                    f"family {name}: materials {items[i]['id']} and {items[j]['id']} are only "
                    f"{dist[i, j]:.4f} apart (minimum {min_distance})"
                )
            flat = [k for k, s in zip(keys, spread, strict=True) if s < min_spread]
            info["min_spread"] = round(float(spread.min()), 4)
            # Spread is only meaningful over several independent variants.
            if len({e.get("group") for e in items}) >= 8 and flat:
                report["problems"].append(
                    f"family {name}: non-colour parameters {flat} barely vary (std < {min_spread})"
                )
        report["families"][name] = info
    return report
