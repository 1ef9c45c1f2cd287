"""Generated request-rate series for training and judging pool-demand forecasts.

Every series is a pool's requests per second at a fixed step (10 s), built from a family's
recipe and a seed, so the whole set is reproducible. Families:

  diurnal        one daily season (compressed or not), multiplicative noise
  weekly         a daily season with a weekly one on top (quieter weekend days)
  trend          a daily season on a growing or shrinking base
  bursts         a daily season with short bursts of 1.5-3x
  level_shift    a daily season whose base jumps once (a deploy, a new client)
  noise          no season: a mean-reverting level with noise

Training and held-out series share the families but not the seeds. The `unseen` set uses
shapes no training series has: other season lengths, a sawtooth day, two seasons of unrelated
lengths, and a ramp; it measures how a forecaster does on a pool that looks like nothing it
was built on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STEP_S = 10.0
# Season lengths in steps used by training and held-out series: a 24-minute and a 1-hour "day".
TRAIN_PERIODS = (144, 360)


@dataclass
class Series:
    name: str
    family: str
    values: np.ndarray  # requests per second, one per step
    period: int | None  # the true (shortest) season in steps, if any

    def __post_init__(self) -> None:
        # Rounded as written to CSV, so the scores and fulcrum see the same numbers.
        self.values = np.round(np.asarray(self.values, dtype=float), 3)

    def csv(self) -> str:
        rows = ["t_s,rps"]
        rows += [f"{i * STEP_S:.0f},{v:.3f}" for i, v in enumerate(self.values)]
        return "\n".join(rows) + "\n"


def _noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    # AR(1) multiplicative noise: real traffic is not white from one 10 s step to the next.
    e = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = 0.6 * acc + e[i]
        out[i] = acc
    return np.exp(out)


def _day(n: int, period: int, amplitude: float, phase: float, shape: str = "sine") -> np.ndarray:
    t = (np.arange(n) / period + phase) % 1.0
    if shape == "sawtooth":
        wave = 2.0 * t - 1.0
    else:
        # A day with a sharper peak than a pure sine: most services look like this.
        wave = np.sin(2 * math.pi * t) + 0.3 * np.sin(4 * math.pi * t + 0.5)
        wave /= 1.3
    return 1.0 + amplitude * wave


def make(family: str, seed: int, period: int | None = None, length_seasons: float = 7.0) -> Series:
    """One series of `family` from `seed`; `period` (steps) defaults to one of TRAIN_PERIODS."""
    rng = np.random.default_rng(seed)
    if period is None:
        period = int(rng.choice(TRAIN_PERIODS))
    base = float(np.exp(rng.uniform(math.log(30), math.log(3000))))
    amplitude = float(rng.uniform(0.3, 0.8))
    phase = float(rng.uniform(0, 1))
    sigma = float(rng.uniform(0.02, 0.08))
    n = int(length_seasons * period)
    name = f"{family}-{seed}"
    if family == "noise":
        n = 7 * 144
        level = np.empty(n)
        x = 0.0
        for i in range(n):
            x = 0.98 * x + rng.normal(0, 0.03)
            level[i] = x
        return Series(name, family, base * np.exp(level) * _noise(rng, n, sigma), None)
    shape = _day(n, period, amplitude, phase)
    if family == "diurnal":
        values = base * shape
    elif family == "weekly":
        # A compressed week of 24-minute days: three weeks of 1-hour days would be 7,560 steps.
        period = TRAIN_PERIODS[0]
        n = 3 * 7 * period
        shape = _day(n, period, amplitude, phase)
        day = (np.arange(n) // period) % 7
        weekend = np.where(day >= 5, rng.uniform(0.4, 0.8), 1.0)
        values = base * shape * weekend
        return Series(name, family, values * _noise(rng, n, sigma), period)
    elif family == "trend":
        growth = float(rng.uniform(-0.5, 1.5))
        values = base * shape * (1.0 + growth * np.arange(n) / n)
    elif family == "bursts":
        values = base * shape
        for _ in range(int(rng.integers(3, 8))):
            at = int(rng.integers(period, n - 10))
            dur = int(rng.integers(3, 18))
            values[at : at + dur] *= rng.uniform(1.5, 3.0)
    elif family == "level_shift":
        at = int(rng.integers(3 * period, n - period))
        values = base * shape
        values[at:] *= rng.choice([rng.uniform(0.4, 0.7), rng.uniform(1.4, 2.2)])
    else:
        raise ValueError(f"unknown family {family}")
    return Series(name, family, values * _noise(rng, n, sigma), period)


FAMILIES = ("diurnal", "weekly", "trend", "bursts", "level_shift", "noise")


def training_set(count_per_family: int, seed: int) -> list[Series]:
    """`count_per_family` series of every family; disjoint seeds give disjoint draws."""
    return [make(f, seed * 10_000 + i * 7 + k) for k, f in enumerate(FAMILIES) for i in range(count_per_family)]


def unseen_set(seed: int) -> list[Series]:
    """Shapes and season lengths no training series has."""
    rng = np.random.default_rng(seed)
    out = []
    for i, period in enumerate((90, 500)):
        s = make("diurnal", seed * 100 + i, period=period)
        out.append(Series(f"unseen-period{period}-{i}", "unseen", s.values, period))
    n = 7 * 200
    saw = 400 * _day(n, 200, 0.6, 0.1, shape="sawtooth") * _noise(rng, n, 0.04)
    out.append(Series("unseen-sawtooth", "unseen", saw, 200))
    n = 2000
    two = 800 * (1 + 0.4 * np.sin(2 * math.pi * np.arange(n) / 130)) * (1 + 0.3 * np.sin(2 * math.pi * np.arange(n) / 410))
    out.append(Series("unseen-two-seasons", "unseen", two * _noise(rng, n, 0.04), 130))
    n = 1500
    ramp = 100 + 900 * np.clip((np.arange(n) - 300) / 900, 0, 1)
    ramp[1000:] *= 1.5
    out.append(Series("unseen-ramp-shift", "unseen", ramp * _noise(rng, n, 0.05), None))
    return out
