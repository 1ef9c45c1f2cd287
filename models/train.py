"""Train fulcrum's weight model and export it to ONNX.

    .venv/bin/python models/train.py --train models/data/train.csv --heldout models/data/heldout.csv

The model maps one backend's feature row (schema fulcrum-features-v1, normalised within its
pool) to an estimate of the backend's effective capacity relative to the pool's mean:

    cap    = true_concurrency / true_service_ms * (1 - true_error_rate) ** 4   (eps when down)
    target = log(cap / mean over the pool's backends at that tick of cap)

A gradient-boosted tree ensemble (scikit-learn GradientBoostingRegressor) predicts the
target; the ONNX graph returns scores = exp(prediction), one positive score per backend, which
fulcrum normalises into weights. Writes models/balancer.onnx and models/metrics.json.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingRegressor

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "fulcrum-features-v1"
FEATURES = [
    "share", "rate_rel", "ewma_rel", "mean_rel", "p50_rel", "p99_rel", "in_flight_rel",
    "mean_in_flight_rel", "max_in_flight_rel", "error_rate", "healthy", "static_weight_rel",
    "current_weight_rel", "reported_load", "has_samples", "pool_size_inv",
]
# Columns held constant during training so the trees never split on them. reported_load is -1
# throughout simulated data; a real backend's value must not steer an untrained branch.
IGNORED = ["reported_load"]
EPS_CAP = 1e-3          # capacity of a down backend, relative to the units of cap
ERROR_EXPONENT = 2
LOG_CLIP = (-8.0, 5.0)  # bounds on the predicted log score inside the graph


def load(paths):
    """Feature matrix, target, pool ids and a scenario id per row."""
    feats, truth, pool_keys, scen = [], [], [], []
    for fi, path in enumerate(paths):
        with open(path, newline="") as f:
            r = csv.reader(f)
            header = next(r)
            idx = {n: i for i, n in enumerate(header)}
            fcols = [idx[n] for n in FEATURES]
            tcols = [idx[n] for n in ("true_concurrency", "true_service_ms", "true_error_rate", "true_down")]
            for row in r:
                feats.append([float(row[c]) for c in fcols])
                truth.append([float(row[c]) for c in tcols])
                pool_keys.append((fi, row[0], row[1], row[2], row[3]))
                scen.append((fi, row[0], row[1], row[2]))
    X = np.asarray(feats, dtype=np.float32)
    T = np.asarray(truth, dtype=np.float64)
    _, pool = np.unique(np.array(["\x1f".join(map(str, k)) for k in pool_keys]), return_inverse=True)
    _, sid = np.unique(np.array(["\x1f".join(map(str, k)) for k in scen]), return_inverse=True)
    for name in IGNORED:
        X[:, FEATURES.index(name)] = -1.0
    conc, svc, err, down = T.T
    cap = conc / np.maximum(svc, 1e-9) * (1.0 - np.clip(err, 0, 1)) ** ERROR_EXPONENT
    cap = np.where(down > 0.5, 0.0, cap)
    pool_mean = np.bincount(pool, weights=cap) / np.bincount(pool)
    # A pool with no capacity at all (every backend down) carries no ranking to learn.
    keep = pool_mean[pool] > 0
    X, cap, pool, sid = X[keep], cap[keep], pool[keep], sid[keep]
    cap = np.maximum(cap, EPS_CAP * pool_mean[pool])
    pool_mean = np.bincount(pool, weights=cap) / np.maximum(np.bincount(pool), 1)
    y = np.log(cap / pool_mean[pool])
    return X, y, pool, sid


def pairwise_order_accuracy(y, p, pool, margin=0.1):
    """Share of same-pool backend pairs whose true log capacities differ by more than `margin`
    that the prediction orders correctly."""
    order = np.argsort(pool, kind="stable")
    y, p, pool = y[order], p[order], pool[order]
    bounds = np.flatnonzero(np.diff(pool)) + 1
    good = total = 0
    for ys, ps in zip(np.split(y, bounds), np.split(p, bounds)):
        dy = ys[:, None] - ys[None, :]
        dp = ps[:, None] - ps[None, :]
        mask = dy > margin
        total += int(mask.sum())
        good += int((dp[mask] > 0).sum())
    return good / total if total else float("nan")


def mean_spearman(y, p, pool):
    """Mean Spearman correlation within pools whose targets are not all equal."""
    from scipy.stats import spearmanr
    order = np.argsort(pool, kind="stable")
    y, p, pool = y[order], p[order], pool[order]
    bounds = np.flatnonzero(np.diff(pool)) + 1
    vals = []
    for ys, ps in zip(np.split(y, bounds), np.split(p, bounds)):
        if len(ys) > 2 and np.ptp(ys) > 0.1 and np.ptp(ps) > 0:
            vals.append(spearmanr(ys, ps).statistic)
    return float(np.mean(vals)) if vals else float("nan")


def to_onnx(model, n_features):
    inner = convert_sklearn(
        model, initial_types=[("features", FloatTensorType([None, n_features]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    g = inner.graph
    pred = g.output[0].name
    lo = helper.make_tensor("log_lo", TensorProto.FLOAT, [], [LOG_CLIP[0]])
    hi = helper.make_tensor("log_hi", TensorProto.FLOAT, [], [LOG_CLIP[1]])
    axes = helper.make_tensor("squeeze_axes", TensorProto.INT64, [1], [1])
    g.initializer.extend([lo, hi, axes])
    g.node.extend([
        helper.make_node("Clip", [pred, "log_lo", "log_hi"], ["log_score"], name="clip_log"),
        helper.make_node("Exp", ["log_score"], ["scores_2d"], name="exp"),
        helper.make_node("Squeeze", ["scores_2d", "squeeze_axes"], ["scores"], name="squeeze"),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]))
    g.name = "fulcrum_balancer"
    inner.producer_name = "fulcrum-models"
    inner.doc_string = ("Per-backend relative capacity score (exp of predicted log capacity vs pool "
                        "mean) from fulcrum-features-v1; gradient-boosted trees.")
    helper.set_model_props(inner, {
        "fulcrum_feature_schema": SCHEMA,
        "target": f"log(cap/mean_pool(cap)), cap=concurrency/service_ms*(1-error_rate)^{ERROR_EXPONENT}",
        "features_ignored": ",".join(IGNORED),
    })
    onnx.checker.check_model(inner)
    return inner


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, nargs="+", default=[ROOT / "models/data/train.csv"])
    ap.add_argument("--heldout", type=Path, nargs="+", default=[ROOT / "models/data/heldout.csv"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--subsample", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=ROOT / "models/balancer.onnx")
    ap.add_argument("--metrics", type=Path, default=ROOT / "models/metrics.json")
    a = ap.parse_args()

    X, y, pool, _ = load(a.train)
    Xh, yh, poolh, _ = load(a.heldout)
    print(f"train rows {len(y)} pools {pool.max() + 1}; held-out rows {len(yh)} pools {poolh.max() + 1}",
          file=sys.stderr)

    model = GradientBoostingRegressor(
        n_estimators=a.iters, learning_rate=a.lr, max_depth=a.depth, min_samples_leaf=40,
        subsample=a.subsample, max_features=None, random_state=a.seed,
    )
    model.fit(X, y)

    ph = model.predict(Xh)
    resid = yh - ph
    r2 = 1.0 - float(np.sum(resid ** 2) / np.sum((yh - yh.mean()) ** 2))
    mae = float(np.mean(np.abs(resid)))
    pairs = pairwise_order_accuracy(yh, ph, poolh)
    rho = mean_spearman(yh, ph, poolh)
    pt = model.predict(X)
    r2_train = 1.0 - float(np.sum((y - pt) ** 2) / np.sum((y - y.mean()) ** 2))

    m = to_onnx(model, X.shape[1])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, a.out)
    sess = ort.InferenceSession(str(a.out), providers=["CPUExecutionProvider"])
    scores = sess.run(None, {"features": Xh})[0]
    log_onnx = np.log(scores.astype(np.float64))
    expected = np.clip(ph, *LOG_CLIP)
    diff_log = float(np.max(np.abs(log_onnx - expected)))
    diff_score = float(np.max(np.abs(scores - np.exp(expected)) / np.exp(expected)))
    # reported_load must not change a score.
    probe = Xh[:2000].copy()
    probe[:, FEATURES.index("reported_load")] = 0.9
    rl_diff = float(np.max(np.abs(sess.run(None, {"features": probe})[0] - scores[:2000])))

    metrics = {
        "feature_schema": SCHEMA,
        "model": "GradientBoostingRegressor",
        "params": {"n_estimators": a.iters, "learning_rate": a.lr, "max_depth": a.depth,
                   "min_samples_leaf": 40, "subsample": a.subsample, "seed": a.seed},
        "target": f"log(cap/mean_pool(cap)), cap = concurrency/service_ms*(1-error_rate)^{ERROR_EXPONENT}, eps if down",
        "train_rows": int(len(y)), "heldout_rows": int(len(yh)),
        "train_r2": round(r2_train, 4),
        "heldout_r2": round(r2, 4),
        "heldout_mae_log": round(mae, 4),
        "heldout_pairwise_order_accuracy": round(pairs, 4),
        "heldout_mean_spearman": round(rho, 4),
        "onnx_vs_sklearn_max_abs_diff_log": diff_log,
        "onnx_vs_sklearn_max_rel_diff_score": diff_score,
        "reported_load_sensitivity": rl_diff,
        "onnx_bytes": a.out.stat().st_size,
    }
    a.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
