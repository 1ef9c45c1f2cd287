#!/usr/bin/env python3
"""Judge pool-demand forecasters on generated series: fulcrum's against honest baselines.

For every held-out and unseen series (models/forecast/series.py) and every horizon (1, 5 and
15 minutes), each method forecasts the rate at t + h from the rows up to t only (a rolling
origin), at the same origins for every method. Scores per family and method:

  MAPE      mean |y - p50| / y
  sMAPE     mean 2 |y - p50| / (|y| + |p50|)
  coverage  share of origins where y <= p90 (a calibrated p90 covers 90 %)

Methods:
  fulcrum        `fulcrum forecast --input S.csv --horizon-s H --output O.csv`: the product's
                 own forecaster (it finds the season itself; nobody tells it the period)
  model          an ONNX model given with --model, run by ONNX Runtime (the runtime fulcrum
                 uses) on the feature rows `fulcrum forecast --dump-features` writes for the
                 same series, times the window mean; fulcrum's built-in forecast where there
                 is no row or the output is unusable, as in the proxy
  last           the last value
  seasonal_naive the value one season before the target (given the true season)
  holt_winters   additive Holt-Winters on log(rate) with a damped trend, parameters fitted by
                 statsmodels on the warm-up (given the true season), states updated online
  sarima         SARIMA(1,0,1)(0,1,0)[P] on log(rate) (ARIMA(1,1,1) without a season), fitted
                 by statsmodels on the warm-up, innovations updated online. A seasonal MA term
                 makes the state as long as the season: one fit of (0,1,1)[144] took minutes
  prophet        Prophet with the true season as a custom seasonality, refitted once a season
                 on the last four seasons; its 80 % interval's upper end is its p90

The baselines get the true season length, which fulcrum does not: an advantage to them.
p90 of methods that give no quantile: p50 times the 90th percentile of the method's own past
ratios y / p50 at this horizon whose outcome was known at the origin (the rule fulcrum's
built-in forecaster uses).

Recorded series (`--recorded NAME=FILE.csv:PERIOD`, with `--sets recorded` to judge only them):
a series nobody generated, CSV rows `t_s,rps` (what `fulcrum forecast --input` reads), taken one
row per step as the generated ones are, with PERIOD, its shortest season in rows, given to the
baselines. Each is scored as its own family, apart from the held-out mean.

Usage: evaluate.py [--fulcrum target/release/fulcrum] [--model models/forecast.onnx]
                   [--per-family 4] [--seed 2] [--out models/forecast/metrics.json]
                   [--markdown models/forecast/results.md] [--skip prophet,sarima]
                   [--recorded NAME=FILE.csv:PERIOD ...] [--sets held-out,unseen,recorded]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli  # noqa: E402
import series as gen  # noqa: E402

HORIZONS_S = (60, 300, 900)
STRIDE = 3  # evaluate every third step: the scores move by less than their noise
WARM_SEASONS = 4
NO_SEASON_WARM = 4 * 144


def warm_up(s: gen.Series) -> int:
    return WARM_SEASONS * s.period if s.period else NO_SEASON_WARM


def origins(s: gen.Series, h: int) -> np.ndarray:
    return np.arange(warm_up(s), len(s.values) - h, STRIDE)


def with_quantile(p50: np.ndarray, y_at: np.ndarray, ts: np.ndarray, h: int) -> np.ndarray:
    """p90 for a method that gives only a p50: p50 times the 90th percentile of its last 300
    ratios y / p50 whose outcome was already known at the origin (t' + h <= t)."""
    p90 = np.empty_like(p50)
    known: list[float] = []
    j = 0
    for i, (f, t) in enumerate(zip(p50, ts)):
        while j < i and ts[j] + h <= t:
            if p50[j] > 0 and np.isfinite(p50[j]):
                known.append(y_at[j] / p50[j])
            j += 1
        q = float(np.quantile(known[-300:], 0.9)) if len(known) >= 20 else 1.2
        p90[i] = f * max(q, 1.0)
    return p90


# ---------------------------------------------------------------- methods


def last_value(s, h, ts):
    return s.values[ts]


def seasonal_naive(s, h, ts):
    if not s.period:
        return s.values[ts]
    back = s.period * math.ceil(h / s.period)
    return s.values[ts + h - back]


_HW_FITS: dict[str, object] = {}


def _holt_winters_fit(s):
    """statsmodels' fit on the warm-up, once per series (it does not depend on the horizon)."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    if s.name not in _HW_FITS:
        y = np.log(np.maximum(s.values[: warm_up(s)], 1e-3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if s.period:
                model = ExponentialSmoothing(y, trend="add", damped_trend=True, seasonal="add", seasonal_periods=s.period)
            else:
                model = ExponentialSmoothing(y, trend="add", damped_trend=True)
            _HW_FITS[s.name] = model.fit()
    return _HW_FITS[s.name]


def holt_winters(s, h, ts):
    y = np.log(np.maximum(s.values, 1e-3))
    w = warm_up(s)
    m = s.period
    fit = _holt_winters_fit(s)
    p = fit.params
    a, b, phi = p["smoothing_level"], p["smoothing_trend"], p["damping_trend"]
    g = p.get("smoothing_seasonal", 0.0) or 0.0
    level, trend = fit.level[-1], fit.trend[-1]
    season = list(fit.season[-m:]) if m else []
    out = {}
    want = set(ts.tolist())
    for t in range(w, len(y)):
        # State after observing y[t-1]; forecast from t-1 ... the origin is the last observed
        # row, so first forecast from t-1's state, then observe y[t].
        if t - 1 in want:
            damp = sum(phi**k for k in range(1, h + 1))
            f = level + damp * trend + (season[(h - 1) % m] if m else 0.0)
            out[t - 1] = f
        s_old = season[0] if m else 0.0
        new_level = a * (y[t] - s_old) + (1 - a) * (level + phi * trend)
        new_trend = b * (new_level - level) + (1 - b) * phi * trend
        if m:
            new_s = g * (y[t] - level - phi * trend) + (1 - g) * s_old
            season = season[1:] + [new_s]
        level, trend = new_level, new_trend
    return np.exp(np.array([out.get(int(t), np.nan) for t in ts]))


_SARIMA: dict[str, tuple] = {}


def _sarima_filter(s):
    """Fit on the warm-up and one-step predictions of the seasonal difference over the whole
    series with those parameters, once per series (neither depends on the horizon)."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    if s.name in _SARIMA:
        return _SARIMA[s.name]
    y = np.log(np.maximum(s.values, 1e-3))
    w = warm_up(s)
    m = s.period or 1
    d = np.full(len(y), np.nan)
    d[m:] = y[m:] - y[:-m]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = SARIMAX(d[m:w], order=(1, 0, 1), trend="c").fit(disp=False, maxiter=100)
    p = dict(zip(res.model.param_names, np.asarray(res.params, dtype=float)))
    c, phi, theta = p["intercept"], p["ar.L1"], p["ma.L1"]
    mu = c / (1 - phi) if abs(phi) < 0.999 else 0.0
    pred_next = np.full(len(y), np.nan)  # d-hat_{t+1 | t}
    e_prev, d_prev = 0.0, mu
    for t in range(m, len(y)):
        e = d[t] - (mu + phi * (d_prev - mu) + theta * e_prev)
        pred_next[t] = mu + phi * (d[t] - mu) + theta * e
        e_prev, d_prev = e, d[t]
    _SARIMA[s.name] = (mu, phi, pred_next)
    return _SARIMA[s.name]


def sarima(s, h, ts):
    """SARIMA(1,0,1)(0,1,0)[m] on log(rate): ARMA(1,1) with a mean on the seasonal difference
    d_t = y_t - y_{t-m} (m = 1, i.e. ARIMA(1,1,1), without a season). statsmodels fits it on
    the warm-up; after that the parameters stay fixed and the innovations are updated one
    step at a time, so each origin's forecast uses rows up to it only."""
    y = np.log(np.maximum(s.values, 1e-3))
    m = s.period or 1
    mu, phi, pred_next = _sarima_filter(s)
    # k-step forecasts from every origin at once: d-hat_{t+k} = mu + phi^(k-1) (d-hat_{t+1} - mu),
    # y-hat_{t+k} = (y or y-hat)_{t+k-m} + d-hat_{t+k}.
    yhat = {}
    for k in range(1, h + 1):
        dk = mu + phi ** (k - 1) * (pred_next[ts] - mu)
        back = k - m
        base = y[ts + back] if back <= 0 else yhat[back]
        yhat[k] = base + dk
    return np.exp(yhat[h])


def prophet(s, h, ts):
    try:
        import pandas as pd
        from prophet import Prophet
    except ImportError:
        return None
    logging.getLogger("cmdstanpy").setLevel(logging.ERROR)
    logging.getLogger("prophet").setLevel(logging.ERROR)
    m = s.period or 144
    step = gen.STEP_S
    ds = pd.to_datetime(np.arange(len(s.values) + h) * step, unit="s")
    y = np.log(np.maximum(s.values, 1e-3))
    p50 = np.empty(len(ts))
    p90 = np.empty(len(ts))
    # Refit once a season on the last four seasons (rows up to the refit origin only), and
    # forecast every origin until the next refit from that fit.
    i = 0
    while i < len(ts):
        t = int(ts[i])
        block = np.flatnonzero((ts >= t) & (ts < t + m))
        start = max(0, t + 1 - 4 * m)
        model = Prophet(daily_seasonality=False, weekly_seasonality=False, yearly_seasonality=False, interval_width=0.8)
        if s.period:
            model.add_seasonality("season", period=m * step / 86400, fourier_order=8)
        model.fit(pd.DataFrame({"ds": ds[start : t + 1], "y": y[start : t + 1]}))
        fc = model.predict(pd.DataFrame({"ds": ds[ts[block] + h]}))
        # An 80 % interval's upper end is the 90th percentile.
        p50[block] = np.exp(fc["yhat"].to_numpy())
        p90[block] = np.exp(fc["yhat_upper"].to_numpy())
        i = block[-1] + 1
    return p50, p90


def from_fulcrum(run: cli.Run, ts: np.ndarray):
    missing = ts[~np.isfinite(run.p50[ts])]
    if len(missing):
        raise SystemExit(f"fulcrum forecast gave no row for t = {missing[0] * gen.STEP_S} s of {run.series.name}")
    return run.p50[ts], run.p90[ts]


def from_model(session, run: cli.Run, ts: np.ndarray):
    """The model on fulcrum's own feature rows, scaled back by the window mean; where there
    is no row or the output is unusable, fulcrum's built-in forecast (what the proxy does)."""
    p50, p90 = (a.copy() for a in from_fulcrum(run, ts))
    rows = run.features[ts]
    ok = np.isfinite(rows).all(axis=1)
    if ok.any():
        q = session.run(None, {"features": rows[ok]})[0].astype(np.float64)
        scale = run.scale(ts[ok])
        good = np.isfinite(q).all(axis=1) & (q[:, 0] >= 0) & (q[:, 1] >= q[:, 0])
        idx = np.flatnonzero(ok)[good]
        p50[idx] = q[good, 0] * scale[good]
        p90[idx] = q[good, 1] * scale[good]
    return p50, p90


# ---------------------------------------------------------------- scoring


def score(y: np.ndarray, p50: np.ndarray, p90: np.ndarray) -> dict:
    ok = np.isfinite(p50) & (y > 0)
    y, p50, p90 = y[ok], p50[ok], p90[ok]
    return {
        "mape": float(np.mean(np.abs(y - p50) / y)),
        "smape": float(np.mean(2 * np.abs(y - p50) / (np.abs(y) + np.abs(p50) + 1e-9))),
        "coverage90": float(np.mean(y <= p90)),
        "n": int(len(y)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fulcrum", default=cli.default_binary())
    ap.add_argument("--model")
    ap.add_argument("--per-family", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated methods not to run")
    ap.add_argument("--out", default="models/forecast/metrics.json")
    ap.add_argument("--markdown", default="models/forecast/results.md")
    ap.add_argument("--recorded", action="append", default=[], metavar="NAME=FILE.csv:PERIOD",
                    help="a recorded series, judged as its own family (repeatable)")
    ap.add_argument("--sets", default=None, help="comma-separated: held-out, unseen, recorded")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()

    baselines = {
        "last": last_value,
        "seasonal_naive": seasonal_naive,
        "holt_winters": holt_winters,
        "sarima": sarima,
        "prophet": prophet,
    }
    baselines = {k: v for k, v in baselines.items() if k not in skip}
    session = None
    if args.model:
        import onnxruntime as ort

        session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])

    wanted = set((args.sets or "held-out,unseen" + (",recorded" if args.recorded else "")).split(","))
    sets = {}
    if "held-out" in wanted:
        sets["held-out"] = gen.training_set(args.per_family, args.seed)
    if "unseen" in wanted:
        sets["unseen"] = gen.unseen_set(args.seed)
    if "recorded" in wanted:
        if not args.recorded:
            raise SystemExit("evaluate: --sets recorded needs at least one --recorded NAME=FILE.csv:PERIOD")
        sets["recorded"] = [recorded(spec) for spec in args.recorded]
    jobs = [(s, hs) for all_series in sets.values() for s in all_series for hs in HORIZONS_S]
    runs = {(r.series.name, r.horizon_s): r for r in cli.run_all(args.fulcrum, jobs, features=session is not None)}
    print(f"evaluate: fulcrum forecast on {len(jobs)} series x horizons ({time.time() - started:.0f} s)", file=sys.stderr)

    results = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    timing = defaultdict(float)
    for set_name, all_series in sets.items():
        for s in all_series:
            family = {"held-out": s.family, "unseen": "unseen"}.get(set_name, s.family)
            for horizon_s in HORIZONS_S:
                h = int(horizon_s / gen.STEP_S)
                ts = origins(s, h)
                y = s.values[ts + h]
                run = runs[(s.name, horizon_s)]
                outs = {}
                if "fulcrum" not in skip:
                    outs["fulcrum"] = from_fulcrum(run, ts)
                if session is not None:
                    outs["model"] = from_model(session, run, ts)
                for name, method in baselines.items():
                    t0 = time.time()
                    outs[name] = method(s, h, ts)
                    timing[name] += time.time() - t0
                for name, out in outs.items():
                    if out is None:
                        continue
                    if isinstance(out, tuple):
                        p50, p90 = out
                    else:
                        p50 = out
                        p90 = with_quantile(p50, y, ts, h)
                    results[family][name][horizon_s].append(score(y, p50, p90))
            print(f"evaluate: {set_name} {s.name} done ({time.time() - started:.0f} s)", file=sys.stderr)

    summary = {}
    for family, by_method in results.items():
        summary[family] = {}
        for name, by_h in by_method.items():
            summary[family][name] = {}
            for horizon_s, scores in by_h.items():
                n = sum(x["n"] for x in scores)
                summary[family][name][str(horizon_s)] = {
                    k: sum(x[k] * x["n"] for x in scores) / n for k in ("mape", "smape", "coverage90")
                } | {"series": len(scores), "origins": n}
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    text = render(summary)
    Path(args.markdown).write_text(text)
    print(text)
    print(f"evaluate: {time.time() - started:.0f} s; baselines: " + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()), file=sys.stderr)


def recorded(spec: str) -> gen.Series:
    """`NAME=FILE.csv:PERIOD`: the file's rates, one per step, as family `recorded: NAME`."""
    try:
        name, rest = spec.split("=", 1)
        path, period = rest.rsplit(":", 1)
        period = int(period)
    except ValueError:
        raise SystemExit(f"evaluate: --recorded {spec!r}: expected NAME=FILE.csv:PERIOD (PERIOD in rows)")
    with open(path) as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    if rows and rows[0][0] == "t_s":
        rows = rows[1:]
    s = gen.Series(name, f"recorded: {name}", np.array([float(r[1]) for r in rows]), period)
    if len(s.values) < warm_up(s) + 100:
        raise SystemExit(f"evaluate: {path} has {len(s.values)} rows, too few after a warm-up of {WARM_SEASONS} seasons of {period}")
    return s


def is_recorded(family: str) -> bool:
    return family.startswith("recorded: ")


def render(summary: dict) -> str:
    lines = overview(summary)
    for horizon_s in map(str, HORIZONS_S):
        lines.append(f"### Horizon {int(horizon_s) // 60} min: MAPE % / sMAPE % / p90 coverage %")
        lines.append("")
        methods = sorted({m for f in summary.values() for m in f}, key=lambda m: (m not in ("fulcrum", "model"), m))
        lines.append("| family | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))
        for family in sorted(summary, key=lambda f: (is_recorded(f), f == "unseen", f)):
            cells = []
            best = min(
                (summary[family][m][horizon_s]["mape"] for m in methods if m in summary[family] and horizon_s in summary[family][m]),
                default=None,
            )
            for m in methods:
                r = summary[family].get(m, {}).get(horizon_s)
                if r is None:
                    cells.append("n/a")
                    continue
                mape = f"{100 * r['mape']:.1f}"
                if best is not None and r["mape"] == best:
                    mape = f"**{mape}**"
                cells.append(f"{mape} / {100 * r['smape']:.1f} / {100 * r['coverage90']:.0f}")
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def overview(summary: dict) -> list[str]:
    """MAPE % (p90 coverage %) averaged over the held-out families, and on the unseen set."""
    methods = sorted({m for f in summary.values() for m in f}, key=lambda m: (m not in ("model", "fulcrum"), m != "model", m))
    lines = [
        "### Overview: MAPE % (p90 coverage %), mean over the held-out families, and the unseen set",
        "",
        "| set | horizon | " + " | ".join(methods) + " |",
        "|---|---|" + "---:|" * len(methods),
    ]
    held = [f for f in summary if f != "unseen" and not is_recorded(f)]
    sets = [(f"held-out ({len(held)} families)", held), ("unseen", ["unseen"] if "unseen" in summary else [])]
    sets += [(f, [f]) for f in sorted(summary) if is_recorded(f)]
    for set_name, fams in sets:
        for horizon_s in map(str, HORIZONS_S):
            have = [m for m in methods if fams and all(horizon_s in summary[f].get(m, {}) for f in fams)]
            if not have:
                continue
            mape = {m: np.mean([summary[f][m][horizon_s]["mape"] for f in fams]) for m in have}
            cov = {m: np.mean([summary[f][m][horizon_s]["coverage90"] for f in fams]) for m in have}
            best = min(mape.values())
            cells = []
            for m in methods:
                if m not in mape:
                    cells.append("n/a")
                    continue
                v = f"{100 * mape[m]:.1f}"
                cells.append((f"**{v}**" if mape[m] == best else v) + f" ({100 * cov[m]:.0f})")
            lines.append(f"| {set_name} | {int(horizon_s) // 60} min | " + " | ".join(cells) + " |")
    return lines + [""]


if __name__ == "__main__":
    main()
