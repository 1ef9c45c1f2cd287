#!/usr/bin/env python3
"""Self-check of the forecast pipeline against the binary it serves (no test framework needed).

  1. `fulcrum forecast --dump-features` rows are what this pipeline assumes: 41 columns in
     schema order, w0 x (window mean) is the latest rate, target_ratio x mean is the rate
     h steps later, b50 and b90 x mean are the built-in forecast `--output` writes for the
     same origin, season columns equal to 1 and has_season = 0 before a season is known.
  2. With --model: the ONNX file carries
     `fulcrum.forecast.schema = window32-season5-builtin2-v2`, takes `features`
     float32[N, 41] and returns `quantiles` float32[N, 2], finite,
     non-negative and ordered (p90 >= p50) on every row of a generated series and on
     extreme rows (all zeros but one, huge spikes).

Exits non-zero with the first failure.

Usage: check.py [--fulcrum target/release/fulcrum] [--model models/forecast.onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli  # noqa: E402
import series as gen  # noqa: E402


def fail(message: str) -> None:
    raise SystemExit(f"check: FAILED: {message}")


def check_features(binary: str) -> np.ndarray:
    s = gen.make("bursts", 424242, period=144, length_seasons=5)
    run = cli.run(binary, s, 300, features=True)
    rows = np.flatnonzero(np.isfinite(run.features).all(axis=1))
    if len(rows) == 0 or rows[0] != cli.WINDOW - 1:
        fail(f"first feature row at step {rows[:1]}, expected {cli.WINDOW - 1} (a full window)")
    x = run.features[rows]
    scale = run.scale(rows)
    if not np.allclose(x[:, cli.WINDOW - 1] * scale, s.values[rows], rtol=1e-5, atol=1e-3):
        fail("w0 x window mean is not the latest rate: the window layout changed")
    if not np.allclose(x[:, 0] * scale, s.values[rows - (cli.WINDOW - 1)], rtol=1e-5, atol=1e-3):
        fail("w31 x window mean is not the oldest rate of the window")
    known = np.isfinite(run.target_ratio[rows])
    if not np.allclose(run.target_ratio[rows][known] * scale[known], s.values[rows[known] + run.h], rtol=1e-5, atol=1e-3):
        fail("target_ratio x window mean is not the rate h steps later")
    for col, name, want in ((cli.B50, "b50", run.p50), (cli.B90, "b90", run.p90)):
        # --output writes three decimals; the features are float32.
        if not np.allclose(x[:, col] * scale, want[rows], rtol=1e-5, atol=2e-3):
            fail(f"{name} x window mean is not the built-in forecast for the same origin")
    if not (x[:, -1] == run.h).all():
        fail("horizon_steps column is not the horizon in steps")
    no_season = x[:, -2] == 0
    if not no_season.any() or not (x[no_season, cli.WINDOW : cli.WINDOW + 5] == 1).all():
        fail("season columns must be 1 while no season is known")
    if not (x[:, -2] == 1).any():
        fail("the season of a 144-step series was never found")
    print(f"check: feature rows of {s.name}: layout, scale, target, built-in and season columns as expected ({len(rows)} rows)")
    return x


def check_model(path: str, x: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    meta = {p.key: p.value for p in m.metadata_props}
    if meta.get("fulcrum.forecast.schema") != cli.SCHEMA:
        fail(f"metadata fulcrum.forecast.schema = {meta.get('fulcrum.forecast.schema')!r}, expected {cli.SCHEMA!r}")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    if (inp.name, inp.type, inp.shape[1]) != ("features", "tensor(float)", cli.N_FEATURES):
        fail(f"input {inp.name} {inp.type} {inp.shape}, expected features float [N, {cli.N_FEATURES}]")
    if (out.name, out.type, out.shape[1]) != ("quantiles", "tensor(float)", 2):
        fail(f"output {out.name} {out.type} {out.shape}, expected quantiles float [N, 2]")
    extreme = np.ones((4, cli.N_FEATURES), dtype=np.float32)
    extreme[0, : cli.WINDOW] = 0.0
    extreme[0, cli.WINDOW - 1] = cli.WINDOW  # everything in the last step
    extreme[1, : cli.WINDOW] = 0.01
    extreme[1, 0] = cli.WINDOW - 0.31  # one spike long ago
    extreme[2, cli.WINDOW : cli.WINDOW + 5] = 1e6  # a huge season value
    extreme[3, -1] = 1e4  # a horizon far beyond training
    for name, rows in (("generated rows", x), ("extreme rows", extreme)):
        q = sess.run(None, {"features": rows.astype(np.float32)})[0]
        if q.shape != (len(rows), 2):
            fail(f"{name}: output shape {q.shape}")
        if not (np.isfinite(q).all() and (q >= 0).all() and (q[:, 1] >= q[:, 0]).all()):
            fail(f"{name}: outputs must be finite, >= 0 and ordered; got {q[~(np.isfinite(q).all(axis=1))][:3]}")
    print(f"check: {path}: schema {cli.SCHEMA}, shapes, finite ordered non-negative outputs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fulcrum", default=cli.default_binary())
    ap.add_argument("--model")
    args = ap.parse_args()
    x = check_features(args.fulcrum)
    if args.model:
        check_model(args.model, x)
    print("check: ok")


if __name__ == "__main__":
    main()
