"""Running `fulcrum forecast` on a generated series: the built-in forecaster's rolling p50/p90
and the feature rows a forecast model sees, both from the binary itself.

The features are defined once, in Rust (`crates/forecast/src/features.rs`); this module only
reads what `fulcrum forecast --dump-features` writes, so the model is trained and judged on
exactly the rows the proxy would feed it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import series as gen

# Input width of schema window32-season5-builtin2-v2: 32 window steps, 5 season values, the
# built-in forecaster's p50 and p90 (b50, b90), has_season, horizon_steps.
N_FEATURES = 41
WINDOW = 32
B50, B90 = WINDOW + 5, WINDOW + 6
SCHEMA = "window32-season5-builtin2-v2"


@dataclass
class Run:
    """One series at one horizon; arrays are indexed by the origin's step, NaN where absent."""

    series: gen.Series
    horizon_s: int
    p50: np.ndarray  # built-in forecaster
    p90: np.ndarray
    features: np.ndarray | None  # [n, 41] float32, or None when not asked for
    target_ratio: np.ndarray | None  # y[t + h] / window mean, NaN past the end

    @property
    def h(self) -> int:
        return max(1, round(self.horizon_s / gen.STEP_S))

    def scale(self, ts: np.ndarray) -> np.ndarray:
        """The window mean the feature rows at origins `ts` are divided by."""
        v = self.series.values
        return np.array([v[t + 1 - WINDOW : t + 1].mean() for t in ts])


def default_binary() -> str:
    return os.environ.get("FULCRUM_BIN", "target/release/fulcrum")


def run(binary: str, s: gen.Series, horizon_s: int, features: bool) -> Run:
    n = len(s.values)
    p50 = np.full(n, np.nan)
    p90 = np.full(n, np.nan)
    x = np.full((n, N_FEATURES), np.nan, dtype=np.float32) if features else None
    target = np.full(n, np.nan) if features else None
    with tempfile.TemporaryDirectory(prefix="fulcrum-forecast-") as d:
        src, out, dump = Path(d) / "in.csv", Path(d) / "out.csv", Path(d) / "features.csv"
        src.write_text(s.csv())
        cmd = [binary, "forecast", "--input", str(src), "--horizon-s", str(horizon_s), "--output", str(out)]
        if features:
            cmd += ["--dump-features", str(dump)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
        with out.open() as f:
            for row in csv.DictReader(f):
                i = round(float(row["t_s"]) / gen.STEP_S)
                p50[i], p90[i] = float(row["p50"]), float(row["p90"])
        if features:
            with dump.open() as f:
                reader = csv.reader(f)
                header = next(reader)
                if len(header) != N_FEATURES + 3 or header[-1] != "target_ratio":
                    raise SystemExit(f"fulcrum --dump-features wrote {len(header)} columns, expected {N_FEATURES + 3} ({SCHEMA})")
                for row in reader:
                    i = round(float(row[0]) / gen.STEP_S)
                    x[i] = np.array(row[2 : 2 + N_FEATURES], dtype=np.float32)
                    target[i] = float(row[-1]) if row[-1] else np.nan
    return Run(s, horizon_s, p50, p90, x, target)


def run_all(binary: str, jobs: list[tuple[gen.Series, int]], features: bool, workers: int = 2) -> list[Run]:
    """`run` for every (series, horizon), `workers` binaries at a time, in the order given."""
    if not Path(binary).exists():
        raise SystemExit(f"no fulcrum binary at {binary} (cargo build --release -p fulcrum, or set FULCRUM_BIN)")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run(binary, job[0], job[1], features), jobs))
