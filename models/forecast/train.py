#!/usr/bin/env python3
"""Train pool-demand forecast candidates on generated series, pick one by validation numbers,
and export it to ONNX in fulcrum's forecast schema (window32-season5-builtin2-v2).

Rows come from `fulcrum forecast --dump-features` (models/forecast/cli.py): the Rust code is
the one definition of the features. Each row is one origin of one series at one horizon
(60, 300 or 900 s):

  input     features  float32 [N, 41]: the last 32 steps / their mean, the 5 values one
            detected season before the target / the same mean, the built-in forecaster's
            p50 and p90 for the target / the same mean, has_season, horizon_steps
  target    the rate at origin + horizon / the same mean (a ratio, so one model serves pools
            of any size); every candidate is fitted to log(ratio / b50), the built-in
            forecast's error, and the graph adds log(b50) back and turns it with exp
  output    quantiles float32 [N, 2]: p50 and p90 ratios, clipped to exp(-6)..exp(3) and
            ordered (p90 >= p50) inside the graph, so fulcrum's guardrails rarely fire

Candidates (all seeded):

  gbt      two GradientBoostingRegressor with quantile loss (0.5 and 0.9)
  linear   two QuantileRegressor (0.5 and 0.9), linear in the features
  mlp      MLPRegressor (two hidden layers) on log ratio for p50; p90 = p50 + a log offset
           linear in horizon_steps, fitted to the 90th percentile of its training residuals

Training series: series.training_set(per_family, seed=1); validation: seed 3 (neither is
the held-out seed 2 evaluate.py scores on). The candidate with the lowest validation MAPE
(mean over family × horizon) is exported; metadata key `fulcrum.forecast.schema`.
After export, ONNX Runtime must reproduce the Python model on the validation rows.

Usage: train.py --out models/forecast.onnx [--per-family 8] [--metrics models/forecast/train.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli  # noqa: E402
import series as gen  # noqa: E402

HORIZONS_S = (60, 300, 900)
LOG_MIN, LOG_MAX = -6.0, 3.0
OPSETS = {"": 17, "ai.onnx.ml": 3}
HORIZON_COL = cli.N_FEATURES - 1


# ---------------------------------------------------------------- data


def dataset(runs: list[cli.Run], stride: int):
    """Rows with a known target from every run, every `stride`-th origin, and fulcrum's
    built-in p50/p90 at the same origins as ratios to the same mean (for comparison)."""
    xs, zs, groups, builtin = [], [], [], []
    for r in runs:
        ok = np.isfinite(r.features).all(axis=1) & np.isfinite(r.target_ratio) & (r.target_ratio > 0)
        idx = np.flatnonzero(ok)[::stride]
        xs.append(r.features[idx])
        zs.append(np.log(r.target_ratio[idx]))
        groups += [(r.series.family, r.horizon_s)] * len(idx)
        scale = r.scale(idx)
        builtin.append(np.stack([r.p50[idx] / scale, r.p90[idx] / scale], axis=1))
    return np.concatenate(xs).astype(np.float32), np.concatenate(zs), groups, np.concatenate(builtin)


def collect(binary: str, series: list[gen.Series], stride: int):
    runs = cli.run_all(binary, [(s, h) for s in series for h in HORIZONS_S], features=True)
    return dataset(runs, stride)


# ---------------------------------------------------------------- candidates


class Gbt:
    name = "gbt"

    def __init__(self, seed: int):
        from sklearn.ensemble import GradientBoostingRegressor

        common = dict(n_estimators=150, max_depth=4, learning_rate=0.1, subsample=0.5, min_samples_leaf=40, random_state=seed)
        self.models = [GradientBoostingRegressor(loss="quantile", alpha=q, **common) for q in (0.5, 0.9)]

    def fit(self, x, z):
        for m in self.models:
            m.fit(x, z)
        return self

    def predict_log(self, x):
        return np.stack([m.predict(x) for m in self.models], axis=1)

    def onnx_nodes(self):
        return _two_outputs(self.models)


class Linear:
    name = "linear"

    def __init__(self, seed: int, rows: int = 6_000):
        self.seed, self.rows = seed, rows

    def fit(self, x, z):
        from sklearn.linear_model import QuantileRegressor

        rng = np.random.default_rng(self.seed)
        pick = rng.choice(len(z), size=min(self.rows, len(z)), replace=False)
        self.coef = np.zeros((x.shape[1], 2))
        self.intercept = np.zeros(2)
        for j, q in enumerate((0.5, 0.9)):
            m = QuantileRegressor(quantile=q, alpha=0.0, solver="highs").fit(x[pick].astype(np.float64), z[pick])
            self.coef[:, j], self.intercept[j] = m.coef_, m.intercept_
        return self

    def predict_log(self, x):
        return x.astype(np.float64) @ self.coef + self.intercept

    def onnx_nodes(self):
        from onnx import helper, numpy_helper

        from onnx import TensorProto

        # In double precision: unregularised coefficients can be large and cancel.
        inits = [
            numpy_helper.from_array(self.coef.astype(np.float64), "linear_coef"),
            numpy_helper.from_array(self.intercept.astype(np.float64), "linear_intercept"),
        ]
        nodes = [
            helper.make_node("Cast", ["features"], ["linear_x"], to=TensorProto.DOUBLE),
            helper.make_node("MatMul", ["linear_x", "linear_coef"], ["linear_mm"]),
            helper.make_node("Add", ["linear_mm", "linear_intercept"], ["linear_sum"]),
            helper.make_node("Cast", ["linear_sum"], ["logq"], to=TensorProto.FLOAT),
        ]
        return nodes, inits


class Mlp:
    name = "mlp"

    def __init__(self, seed: int):
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(
            StandardScaler(),
            MLPRegressor(hidden_layer_sizes=(64, 32), alpha=1e-4, learning_rate_init=1e-3, max_iter=60, early_stopping=True, random_state=seed),
        )

    def fit(self, x, z):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(x, z)
        resid = z - self.model.predict(x)
        hs = x[:, HORIZON_COL]
        points = [(h, np.quantile(resid[hs == h], 0.9)) for h in np.unique(hs)]
        a = np.array([[1.0, h] for h, _ in points])
        self.offset = np.linalg.lstsq(a, np.array([q for _, q in points]), rcond=None)[0]
        return self

    def predict_log(self, x):
        p50 = self.model.predict(x)
        return np.stack([p50, p50 + self.offset[0] + self.offset[1] * x[:, HORIZON_COL]], axis=1)

    def onnx_nodes(self):
        from onnx import helper, numpy_helper

        nodes, inits, out = _sub_graph(self.model, "mlp_")
        inits += [
            numpy_helper.from_array(np.array([HORIZON_COL], dtype=np.int64), "mlp_hcol_start"),
            numpy_helper.from_array(np.array([HORIZON_COL + 1], dtype=np.int64), "mlp_hcol_end"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "mlp_axis"),
            numpy_helper.from_array(np.array([self.offset[1]], dtype=np.float32), "mlp_slope"),
            numpy_helper.from_array(np.array([self.offset[0]], dtype=np.float32), "mlp_bias"),
        ]
        nodes += [
            helper.make_node("Slice", ["features", "mlp_hcol_start", "mlp_hcol_end", "mlp_axis"], ["mlp_h"]),
            helper.make_node("Mul", ["mlp_h", "mlp_slope"], ["mlp_hs"]),
            helper.make_node("Add", ["mlp_hs", "mlp_bias"], ["mlp_off"]),
            helper.make_node("Add", [out, "mlp_off"], ["mlp_p90"]),
            helper.make_node("Concat", [out, "mlp_p90"], ["logq"], axis=1),
        ]
        return nodes, inits


CANDIDATES = {"gbt": Gbt, "linear": Linear, "mlp": Mlp}

# The built-in p50 ratio is floored here before its log (a window that fell to nothing).
BASE_MIN = 1e-3


def base_log(x: np.ndarray) -> np.ndarray:
    """log of the built-in forecaster's p50 ratio (column b50) of every row."""
    return np.log(np.maximum(x[:, cli.B50].astype(np.float64), BASE_MIN))


class OnBuiltin:
    """A candidate fitted to log(target / b50): what the built-in forecast gets wrong. Its
    graph adds log(b50) back, so a candidate that learns nothing answers the built-in p50."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def fit(self, x, z):
        self.inner.fit(x, z - base_log(x))
        return self

    def predict_log(self, x):
        return self.inner.predict_log(x) + base_log(x)[:, None]

    def onnx_nodes(self):
        from onnx import helper, numpy_helper

        nodes, inits = self.inner.onnx_nodes()
        for node in nodes:
            node.output[:] = ["resid_logq" if o == "logq" else o for o in node.output]
        inits = list(inits) + [
            numpy_helper.from_array(np.array([cli.B50], dtype=np.int64), "base_start"),
            numpy_helper.from_array(np.array([cli.B50 + 1], dtype=np.int64), "base_end"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "base_axis"),
            numpy_helper.from_array(np.array(BASE_MIN, dtype=np.float32), "base_min"),
        ]
        nodes = list(nodes) + [
            helper.make_node("Slice", ["features", "base_start", "base_end", "base_axis"], ["base_b50"]),
            helper.make_node("Max", ["base_b50", "base_min"], ["base_floored"]),
            helper.make_node("Log", ["base_floored"], ["base_log"]),
            helper.make_node("Add", ["resid_logq", "base_log"], ["logq"]),
        ]
        return nodes, inits


# ---------------------------------------------------------------- ONNX


def _sub_graph(estimator, prefix: str):
    """An estimator's skl2onnx graph as nodes reading `features`, names prefixed."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    g = convert_sklearn(estimator, initial_types=[("features", FloatTensorType([None, cli.N_FEATURES]))], target_opset=OPSETS).graph

    def rename(n: str) -> str:
        return n if n in ("features", "") else prefix + n

    nodes = []
    for node in g.node:
        node.name = prefix + node.name
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
        nodes.append(node)
    inits = []
    for init in g.initializer:
        init.name = rename(init.name)
        inits.append(init)
    return nodes, inits, rename(g.output[0].name)


def _two_outputs(models):
    from onnx import helper

    nodes, inits, outs = [], [], []
    for prefix, m in zip(("q50_", "q90_"), models):
        n, i, o = _sub_graph(m, prefix)
        nodes += n
        inits += i
        outs.append(o)
    nodes.append(helper.make_node("Concat", outs, ["logq"], axis=1))
    return nodes, inits


def finish(log_q: np.ndarray) -> np.ndarray:
    """What the graph's tail does to the log quantiles: clip, exp, p90 >= p50."""
    e = np.exp(np.clip(log_q, LOG_MIN, LOG_MAX)).astype(np.float32)
    return np.stack([e[:, 0], np.maximum(e[:, 1], e[:, 0])], axis=1)


def export(candidate, path: Path, metadata: dict[str, str]) -> None:
    import onnx
    from onnx import helper, numpy_helper

    nodes, inits = candidate.onnx_nodes()
    inits = list(inits) + [
        numpy_helper.from_array(np.array(LOG_MIN, dtype=np.float32), "tail_min"),
        numpy_helper.from_array(np.array(LOG_MAX, dtype=np.float32), "tail_max"),
        # [p50, p90] -> [p50, p90 - p50] -> relu -> [p50, p50 + max(p90 - p50, 0)]
        numpy_helper.from_array(np.array([[1, -1], [0, 1]], dtype=np.float32), "tail_diff"),
        numpy_helper.from_array(np.array([[1, 1], [0, 1]], dtype=np.float32), "tail_sum"),
    ]
    nodes = list(nodes) + [
        helper.make_node("Clip", ["logq", "tail_min", "tail_max"], ["tail_clipped"]),
        helper.make_node("Exp", ["tail_clipped"], ["tail_ratio"]),
        helper.make_node("MatMul", ["tail_ratio", "tail_diff"], ["tail_d"]),
        helper.make_node("Relu", ["tail_d"], ["tail_r"]),
        helper.make_node("MatMul", ["tail_r", "tail_sum"], ["quantiles"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fulcrum_forecast",
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, cli.N_FEATURES])],
        [helper.make_tensor_value_info("quantiles", onnx.TensorProto.FLOAT, [None, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()])
    model.ir_version = 8
    model.producer_name = "fulcrum models/forecast/train.py"
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())


def load(path: str):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- scoring


def scores(q: np.ndarray, z: np.ndarray, groups) -> dict:
    """MAPE, sMAPE and p90 coverage of ratio quantiles `q` against log targets `z`, per group
    and as the mean over groups (each family x horizon counts the same)."""
    y = np.exp(z)
    by = defaultdict(list)
    for i, g in enumerate(groups):
        by[g].append(i)
    out = {}
    for g, idx in sorted(by.items()):
        idx = np.array(idx)
        yy, p50, p90 = y[idx], q[idx, 0], q[idx, 1]
        out[f"{g[0]}@{g[1]}"] = {
            "mape": float(np.mean(np.abs(yy - p50) / yy)),
            "smape": float(np.mean(2 * np.abs(yy - p50) / (yy + p50))),
            "coverage90": float(np.mean(yy <= p90)),
            "rows": len(idx),
        }
    out["mean"] = {k: float(np.mean([v[k] for v in out.values()])) for k in ("mape", "smape", "coverage90")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fulcrum", default=cli.default_binary())
    ap.add_argument("--per-family", type=int, default=8)
    ap.add_argument("--val-per-family", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--val-seed", type=int, default=3)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--metrics", default="models/forecast/train.json")
    args = ap.parse_args()

    started = time.time()
    x, z, _, _ = collect(args.fulcrum, gen.training_set(args.per_family, args.seed), args.stride)
    xv, zv, gv, bv = collect(args.fulcrum, gen.training_set(args.val_per_family, args.val_seed), args.stride)
    print(f"train: {len(z)} training rows, {len(zv)} validation rows ({time.time() - started:.0f} s)", file=sys.stderr)

    report = {"training_rows": len(z), "validation_rows": len(zv), "candidates": {}}
    # fulcrum's built-in forecaster on the same validation rows: what a model has to beat.
    report["builtin_validation"] = scores(bv, zv, gv)
    v = report["builtin_validation"]["mean"]
    print(f"train: builtin: validation MAPE {100 * v['mape']:.2f} %, sMAPE {100 * v['smape']:.2f} %, p90 coverage {100 * v['coverage90']:.1f} %", file=sys.stderr)
    fitted = {}
    for name in args.candidates.split(","):
        t0 = time.time()
        c = OnBuiltin(CANDIDATES[name](seed=0)).fit(x, z)
        fitted[name] = c
        report["candidates"][name] = {
            "validation": scores(finish(c.predict_log(xv)), zv, gv),
            "train_mean": scores(finish(c.predict_log(x)), z, [("all", 0)] * len(z))["mean"],
            "fit_s": round(time.time() - t0, 1),
        }
        v = report["candidates"][name]["validation"]["mean"]
        print(f"train: {name}: validation MAPE {100 * v['mape']:.2f} %, sMAPE {100 * v['smape']:.2f} %, p90 coverage {100 * v['coverage90']:.1f} % ({time.time() - t0:.0f} s)", file=sys.stderr)

    best = min(fitted, key=lambda n: report["candidates"][n]["validation"]["mean"]["mape"])
    report["chosen"] = best
    out = Path(args.out)
    export(fitted[best], out, {"fulcrum.forecast.schema": cli.SCHEMA, "fulcrum.forecast.model": best})
    onnx_q = load(str(out)).run(None, {"features": xv})[0]
    py_q = finish(fitted[best].predict_log(xv))
    report["onnx_max_abs_diff"] = float(np.max(np.abs(onnx_q - py_q)))
    report["onnx_max_rel_diff"] = float(np.max(np.abs(onnx_q - py_q) / py_q))
    report["size_bytes"] = out.stat().st_size
    report["seconds"] = round(time.time() - started)
    Path(args.metrics).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"train: chose {best}; wrote {out} ({out.stat().st_size // 1024} kB); ONNX Runtime vs Python max relative difference {report['onnx_max_rel_diff']:.1e}",
        file=sys.stderr,
    )
    if report["onnx_max_rel_diff"] > 1e-4:
        raise SystemExit("train: ONNX Runtime does not reproduce the Python model")


if __name__ == "__main__":
    main()
