#!/usr/bin/env python3
"""How high the forecast scaler planned in lab runs: for each run of each lab JSON given, the
demand the proxy planned for (`planned_rps` of every step's `/api/forecast`) over the rate that
arrived, both summed from 600 s of scenario time on, and the per-step noise of the rate the
proxy measured (mean absolute deviation from its 5-step centred moving average).

    python3 benches/autoscale_lab_plan.py benches/results/autoscale-lab/counting-noise/lab-*.json
"""
import json
import sys


def main(paths):
    print("| run | scaler | backend-s | SLO violation windows | plan / arriving | rate noise per step |")
    print("|---|---|---:|---:|---:|---:|")
    for path in paths:
        doc = json.load(open(path))
        for run in doc["results"]:
            steps = [s for s in run["timeline"] if s.get("forecast")]
            late = [s for s in steps if s["t_s"] >= 600]
            arriving = sum(s["arrivals_rps"] for s in late)
            plan = sum(s["forecast"]["planned_rps"] for s in late)
            observed = [s["forecast"]["observed_rps"] for s in steps]
            dev = [
                abs(observed[i] - sum(observed[i - 2 : i + 3]) / 5) / observed[i]
                for i in range(2, len(observed) - 2)
                if observed[i] > 0
            ]
            print(
                f"| {doc['scenario']} | {run['scaler']} | {run['backend_seconds']:.0f} | "
                f"{run['slo_violation_windows']} | {plan / arriving:.3f}× | "
                f"{100 * sum(dev) / len(dev):.1f} % |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
