"""Parameter kinds of a material family and the ``Family`` record that groups them.

``Num`` (a numeric range, optionally log-uniform), ``Color`` (a palette jittered in HSV,
stored as linear RGB) and ``Choice`` (a discrete option kept for the whole variant); the
placement parameters ``ROT`` and ``OFFSET`` shared by the families, and ``hex_palette`` for
writing palettes as hex codes.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

JITTER = 0.1  # fraction of a parameter's range a seed moves away from its variant


@dataclass(frozen=True)
class Num:
    """A numeric parameter uniform in [lo, hi] (``log`` for scales spanning decades)."""

    lo: float
    hi: float
    log: bool = False
    jitter: bool = True

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(np.exp(rng.uniform(np.log(self.lo), np.log(self.hi))))
        return float(rng.uniform(self.lo, self.hi))

    def perturb(self, value: float, rng: np.random.Generator) -> float:
        if not self.jitter:
            return value
        if self.log:
            span = np.log(self.hi) - np.log(self.lo)
            v = np.log(value) + rng.uniform(-JITTER, JITTER) * span
            return float(np.exp(np.clip(v, np.log(self.lo), np.log(self.hi))))
        v = value + rng.uniform(-JITTER, JITTER) * (self.hi - self.lo)
        return float(np.clip(v, self.lo, self.hi))

    def normalise(self, value: float) -> float:
        if self.log:
            return float((np.log(value) - np.log(self.lo)) / (np.log(self.hi) - np.log(self.lo)))
        return float((value - self.lo) / (self.hi - self.lo)) if self.hi > self.lo else 0.0


@dataclass(frozen=True)
class Color:
    """A colour: one of ``palette`` (sRGB 0-1 triples) jittered in HSV, stored linear."""

    palette: tuple[tuple[float, float, float], ...]
    hue: float = 0.02
    sat: float = 0.12
    val: float = 0.15

    def sample(self, rng: np.random.Generator) -> list[float]:
        base = self.palette[int(rng.integers(len(self.palette)))]
        h, s, v = colorsys.rgb_to_hsv(*base)
        h = (h + rng.uniform(-self.hue, self.hue)) % 1.0
        s = float(np.clip(s * (1 + rng.uniform(-self.sat, self.sat) * 2), 0, 1))
        v = float(np.clip(v * (1 + rng.uniform(-self.val, self.val)), 0.01, 1))
        rgb = colorsys.hsv_to_rgb(h, s, v)
        return [round(_srgb_to_linear(c), 4) for c in rgb]


@dataclass(frozen=True)
class Choice:
    """A discrete parameter (kept for the whole variant)."""

    options: tuple

    def sample(self, rng: np.random.Generator) -> object:
        return self.options[int(rng.integers(len(self.options)))]


@dataclass(frozen=True)
class Family:
    name: str
    category: str
    params: dict = field(default_factory=dict)
    description: str = ""

    def numeric(self) -> list[str]:
        """Non-colour numeric parameters that change the material (placement excluded)."""
        return [k for k, v in self.params.items() if isinstance(v, Num) and k not in PLACEMENT]


def _srgb_to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def hex_palette(*codes: str) -> tuple[tuple[float, float, float], ...]:
    """sRGB 0-1 triples from hex codes (``"c8955a"``), for ``Color`` palettes."""
    return tuple(tuple(int(c[i : i + 2], 16) / 255 for i in (0, 2, 4)) for c in codes)


# Where the pattern sits on the object: not a property of the material, so the diversity
# check ignores these two.
PLACEMENT = ("rotation", "offset")
ROT = Num(0.0, 6.2832, jitter=False)
OFFSET = Num(0.0, 50.0, jitter=False)
