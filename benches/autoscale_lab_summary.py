"""Summarise benches/autoscale-lab.sh: the lab's scaler runs beside the simulator's on the same
scenarios, and the issue's targets checked in both.

    python3 benches/autoscale_lab_summary.py DIR SCENARIO...   # Markdown on stdout

Reads DIR/lab-SCENARIO.json, DIR/lab-capacity-SCENARIO.json (if present) and
DIR/sim-SCENARIO.json (written by `fulcrum lab --scaler` and `fulcrum sim --scaler`); writes
DIR.csv and DIR.json (one row per scenario, scaler and mode), DIR/timeline-SCENARIO.csv (every
lab scaler step: copies, the proxy's recommendation, plan and capacity estimate) and
DIR/SCENARIO.svg (copies serving under each scaler in the lab, against the copies the demand
needed). Standard library only.
"""
import csv
import json
import sys
import tomllib
from pathlib import Path

SCALERS = ["hpa", "forecast", "forecast:60", "forecast+capacity", "forecast:60+capacity",
           "static"]
FORECASTS = [k for k in SCALERS if k.startswith("forecast")]
# The simulator's forecast scaler reads the copies' true utilisation as their reported load, so
# its capacity estimate is the true capacity: its lab counterpart is the run with
# `backend_capacity_rps` set. The lab's plain `forecast` row is the proxy as configured by
# default (static weights), which has no simulator counterpart of its own.
SIM_OF = {"hpa": "hpa", "static": "static", "forecast": "forecast",
          "forecast+capacity": "forecast", "forecast:60+capacity": "forecast:60"}
LABEL = {"hpa": "reactive (HPA)", "forecast": "forecast", "static": "static (peak)",
         "forecast:60": "forecast:60",
         "forecast+capacity": "forecast, capacity set",
         "forecast:60+capacity": "forecast:60, capacity set"}
COLOURS = {"hpa": "#d62728", "forecast": "#1f77b4", "static": "#7f7f7f",
           "forecast+capacity": "#2ca02c", "forecast:60+capacity": "#9467bd"}


def runs(path):
    doc = json.loads(path.read_text())
    return doc, {r["scaler"]: r for r in doc["results"]}


def row(scenario, mode, r, hpa):
    return {
        "scenario": scenario,
        "mode": mode,
        "scaler": r["scaler"],
        "backend_seconds": round(r["backend_seconds"], 1),
        "vs_hpa": round(r["backend_seconds"] / hpa["backend_seconds"], 3) if hpa else None,
        "slo_windows": r["slo_windows"],
        "slo_violation_windows": r["slo_violation_windows"],
        "p99_ms": round(r["p99_ms"], 1),
        "requests": r["requests"],
        "errors": r["errors"],
        "slow_requests": r["slow_requests"],
        "scale_ups": r["scale_ups"],
        "scale_downs": r["scale_downs"],
        "peak_serving": r["peak_serving"],
    }


def ratio(x):
    return "–" if x is None else f"{x:.2f}×"


def targets(by, forecast="forecast"):
    """The issue's two targets for a forecast run, as (text, held) pairs."""
    f, h, s = by.get(forecast), by.get("hpa"), by.get("static")
    out = []
    if f and h:
        v_ok = f["slo_violation_windows"] <= 0.5 * h["slo_violation_windows"]
        b = f["backend_seconds"] / h["backend_seconds"]
        out.append((f"violations {f['slo_violation_windows']} vs {h['slo_violation_windows']}, "
                    f"backend-s {b:.2f}×", v_ok and b <= 1.1))
    if f and s:
        b = f["backend_seconds"] / s["backend_seconds"]
        v_ok = f["slo_violation_windows"] <= s["slo_violation_windows"]
        out.append((f"backend-s {b:.2f}×, violations {f['slo_violation_windows']} vs "
                    f"{s['slo_violation_windows']}", v_ok and b <= 0.75))
    return out


def needed_copies(scenario_file, rate):
    sc = tomllib.loads(scenario_file.read_text())
    a = sc["autoscale"]
    b = next(x for x in sc["backends"] if x["name"] == a["backend"])
    jitter = b.get("service_jitter", 0.0)
    import math
    mean_ms = b["service_ms"] * math.exp(jitter * jitter / 2)
    capacity = b["concurrency"] * 1000.0 / mean_ms
    return rate / (capacity * a.get("target_utilization", 0.7)), sc["warmup_s"]


def svg(scenario, lab, scenario_file):
    """Copies serving over scenario time under each scaler, and the demand in copies."""
    width, height, pad = 900, 320, 45
    series = {k: [(s["t_s"], s["serving"]) for s in r["timeline"]] for k, r in lab.items()}
    any_run = next(iter(lab.values()))
    demand = []
    warmup = 0.0
    for s in any_run["timeline"]:
        need, warmup = needed_copies(scenario_file, s["arrivals_rps"])
        demand.append((s["t_s"], need))
    t_max = max(t for pts in series.values() for t, _ in pts)
    y_max = max([v for pts in series.values() for _, v in pts] + [v for _, v in demand]) * 1.1
    x = lambda t: pad + (width - 2 * pad) * t / t_max
    y = lambda v: height - pad - (height - 2 * pad) * v / y_max
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect x="{x(0):.1f}" y="{pad}" width="{x(warmup) - x(0):.1f}" '
             f'height="{height - 2 * pad}" fill="#eee"/>',
             f'<text x="{pad}" y="20">{scenario}, lab: copies serving under each scaler; '
             f'black: copies the offered rate needs at the target utilisation '
             f'(warm-up shaded)</text>']
    for v in range(0, int(y_max) + 1, 5):
        parts.append(f'<text x="5" y="{y(v) + 4:.1f}">{v}</text>'
                     f'<line x1="{pad}" x2="{width - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     f'stroke="#ddd"/>')
    for t in range(0, int(t_max) + 1, 600):
        parts.append(f'<text x="{x(t) - 10:.1f}" y="{height - pad + 16}">{t} s</text>')

    def line(pts, colour, w=1.5):
        d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        return f'<polyline fill="none" stroke="{colour}" stroke-width="{w}" points="{d}"/>'

    parts.append(line(demand, "#000", 1))
    for k, pts in series.items():
        parts.append(line(pts, COLOURS.get(k, "#2ca02c")))
    for i, k in enumerate(series):
        parts.append(f'<text x="{width - pad - 140}" y="{pad + 16 * i + 12}" '
                     f'fill="{COLOURS.get(k, "#2ca02c")}">{LABEL.get(k, k)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    out = Path(sys.argv[1])
    scenarios = sys.argv[2:]
    rows, target_rows, time_scale = [], [], None
    for sc in scenarios:
        lab_doc, lab = runs(out / f"lab-{sc}.json")
        _, sim = runs(out / f"sim-{sc}.json")
        capacity = out / f"lab-capacity-{sc}.json"
        if capacity.is_file():
            for k, r in runs(capacity)[1].items():
                r["scaler"] = f"{k}+capacity"
                lab[r["scaler"]] = r
        time_scale = lab_doc.get("time_scale")
        for mode, by in (("lab", lab), ("sim", sim)):
            for k in SCALERS:
                if k in by:
                    rows.append(row(sc, mode, by[k], by.get("hpa")))
            for f in FORECASTS:
                for (text, held), which in zip(targets(by, f), ["vs reactive", "vs static"]):
                    target_rows.append((sc, mode, f, which, text, held))
        with open(out / f"timeline-{sc}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scaler", "t_s", "arrivals_rps", "serving", "provisioning", "draining",
                        "desired", "recommended", "proxy_observed_rps", "proxy_planned_rps",
                        "proxy_capacity_rps", "capacity_source", "season_s"])
            for k, r in lab.items():
                for p in r["timeline"]:
                    fv = p.get("forecast") or {}
                    w.writerow([k, round(p["t_s"], 2), round(p["arrivals_rps"], 1), p["serving"],
                                p["provisioning"], p["draining"], p["desired"],
                                p["recommended"], fv.get("observed_rps"), fv.get("planned_rps"),
                                fv.get("capacity_rps"), fv.get("capacity_source"),
                                fv.get("season_s")])
        (out / f"{sc}.svg").write_text(
            svg(sc, lab, Path("benches/scenarios/autoscale") / f"{sc}.toml"))
    with open(f"{out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    Path(f"{out}.json").write_text(json.dumps(
        {"time_scale": time_scale, "rows": rows,
         "targets": [dict(zip(["scenario", "mode", "scaler", "target", "figures", "held"], t))
                     for t in target_rows]}, indent=1) + "\n")

    print("| scenario | scaler (lab) | backend-s lab | backend-s sim | vs reactive lab | vs reactive sim "
          "| SLO violation windows lab | sim | p99 ms lab | sim | failed lab "
          "| scale up/down lab | sim | peak serving lab | sim |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|")
    by = {(r["scenario"], r["mode"], r["scaler"]): r for r in rows}
    for sc in scenarios:
        for k in SCALERS:
            l, s = by.get((sc, "lab", k)), by.get((sc, "sim", SIM_OF.get(k, k)))
            if not l:
                continue
            sim = lambda key, fmt="{}": fmt.format(s[key]) if s else "–"
            print(f"| {sc} | {LABEL[k]} | {l['backend_seconds']:.0f} "
                  f"| {sim('backend_seconds', '{:.0f}')} "
                  f"| {ratio(l['vs_hpa'])} | {ratio(s['vs_hpa']) if s else '–'} "
                  f"| {l['slo_violation_windows']}/{l['slo_windows']} "
                  f"| {s['slo_violation_windows'] if s else '–'}/{s['slo_windows'] if s else '–'} "
                  f"| {l['p99_ms']:.0f} | {sim('p99_ms', '{:.0f}')} | {l['errors']} "
                  f"| {l['scale_ups']}/{l['scale_downs']} "
                  f"| {sim('scale_ups')}/{sim('scale_downs')} "
                  f"| {l['peak_serving']} | {sim('peak_serving')} |")
    print()
    print("| scenario | scaler | target | lab | held | sim | held |")
    print("|---|---|---|---|---|---|---|")
    want = {"vs reactive": "≤ ½ reactive's violation windows at ≤ 1.1× its backend-s",
            "vs static": "≤ 0.75× static's backend-s with no more violation windows"}
    t = {(s, m, f, w): (text, held) for s, m, f, w, text, held in target_rows}
    yes = lambda h: "yes" if h else "**no**"
    for sc in scenarios:
        for f in FORECASTS:
            for w in ("vs reactive", "vs static"):
                l, s = t.get((sc, "lab", f, w)), t.get((sc, "sim", SIM_OF.get(f, f), w))
                if not l:
                    continue
                sim = f"| {s[0]} | {yes(s[1])} |" if s else "| – | – |"
                print(f"| {sc} | {LABEL[f]} | {want[w]} | {l[0]} | {yes(l[1])} {sim}")


if __name__ == "__main__":
    main()
