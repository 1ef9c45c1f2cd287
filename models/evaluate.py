"""Benchmark a weight model on the public scenario suite in the simulator.

    .venv/bin/python models/evaluate.py --model models/balancer.onnx [--json models/benchmark.json]
        [--bin target/release/fulcrum]

The binary is --bin, else $FULCRUM_BIN, else target/release/fulcrum (as for collect.py).

For each of benches/scenarios/*.toml, runs least_connections, p2c_ewma, oracle and the two
`+model` policies driven by the model, then the same `+model` policies driven by the built-in
heuristic, and prints p99 and error % per policy with the share of the gap between the best
classical policy and the oracle that the best model policy closes:

    gap closed = (best classical p99 - best model p99) / (best classical p99 - oracle p99)
"""
import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "target" / "release" / "fulcrum"
CLASSICAL = ["least_connections", "p2c_ewma"]
MODEL = ["least_connections+model", "p2c_ewma+model"]


def sim(binary, scenario, policies, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [str(binary), "sim", "--scenario", str(scenario)]
        for p in policies:
            cmd += ["--policy", p]
        cmd += extra + ["--json", f.name]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        return {r["policy"]: r for r in json.load(open(f.name))["results"]}


def gap(best_classical, oracle, value):
    g = best_classical - oracle
    return (best_classical - value) / g if g > 0 else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models/balancer.onnx")
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("FULCRUM_BIN", DEFAULT_BIN)),
                    help="the fulcrum binary (default: $FULCRUM_BIN, else target/release/fulcrum)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    # A relative path is relative to the caller's working directory, not to ROOT where sim() runs.
    a.bin = a.bin.resolve()
    if not a.bin.is_file():
        ap.error(f"no fulcrum binary at {a.bin}; build it or pass --bin / set FULCRUM_BIN")
    rows = []
    for scen in sorted((ROOT / "benches/scenarios").glob("*.toml")):
        m = sim(a.bin, scen, CLASSICAL + ["oracle"] + MODEL, ["--model", str(a.model)])
        h = sim(a.bin, scen, MODEL, ["--heuristic"])
        best_c = min(CLASSICAL, key=lambda p: m[p]["p99_ms"])
        best_m = min(MODEL, key=lambda p: m[p]["p99_ms"])
        best_h = min(MODEL, key=lambda p: h[p]["p99_ms"])
        row = {"scenario": scen.stem}
        for p in CLASSICAL + ["oracle"] + MODEL:
            row[p] = {"p99_ms": m[p]["p99_ms"], "error_pct": 100 * m[p]["error_rate"]}
        for p in MODEL:
            row["heuristic:" + p] = {"p99_ms": h[p]["p99_ms"], "error_pct": 100 * h[p]["error_rate"]}
        row["best_classical"] = best_c
        row["gap_closed_model"] = gap(m[best_c]["p99_ms"], m["oracle"]["p99_ms"], m[best_m]["p99_ms"])
        row["gap_closed_heuristic"] = gap(m[best_c]["p99_ms"], m["oracle"]["p99_ms"], h[best_h]["p99_ms"])
        rows.append(row)

    cols = CLASSICAL + ["oracle"] + MODEL + ["heuristic:" + p for p in MODEL]
    short = {"least_connections": "LC", "p2c_ewma": "P2C", "oracle": "oracle",
             "least_connections+model": "LC+model", "p2c_ewma+model": "P2C+model",
             "heuristic:least_connections+model": "LC+heur", "heuristic:p2c_ewma+model": "P2C+heur"}
    print("p99 ms (error %)\n")
    print("| scenario | " + " | ".join(short[c] for c in cols) + " | gap closed: model | gap closed: heuristic |")
    print("|---|" + "---:|" * (len(cols) + 2))
    def closed(r, prefix, share):
        # The gap share does not apply where there is no gap to close (homogeneous) or where
        # p99 may rise in exchange for errors (fast-failing): show the trade instead, against
        # the lowest classical p99 and error rate.
        best = min([r[prefix + p] for p in MODEL], key=lambda x: (x["error_pct"], x["p99_ms"])
                   if r["scenario"] == "fast-failing" else x["p99_ms"])
        low_p99 = min(r[p]["p99_ms"] for p in CLASSICAL)
        low_err = min(r[p]["error_pct"] for p in CLASSICAL)
        rise = 100 * (best["p99_ms"] / low_p99 - 1)
        if r["scenario"] == "fast-failing":
            return f"n/a: errors {low_err:.2f} % → {best['error_pct']:.2f} %, p99 {rise:+.1f} %"
        if r["scenario"] == "homogeneous":
            return f"n/a: no gap; p99 {rise:+.1f} %"
        return f"{100 * share:.0f} %"

    for r in rows:
        cells = [f"{r[c]['p99_ms']:.1f} ({r[c]['error_pct']:.2f})" for c in cols]
        print(f"| {r['scenario']} | " + " | ".join(cells)
              + f" | {closed(r, '', r['gap_closed_model'])}"
              + f" | {closed(r, 'heuristic:', r['gap_closed_heuristic'])} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
