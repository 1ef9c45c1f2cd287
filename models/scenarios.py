"""Randomised training scenarios for fulcrum's weight model.

    .venv/bin/python models/scenarios.py --seed 1 --count 150 --out /tmp/scenarios

Each scenario is a TOML file in the format of benches/scenarios/README.md: 2-12 backends of
equal or mixed capacity (concurrency 1-32, median service time 10-80 ms, lognormal jitter
0.2-0.6), an offered load of 30-97 % of capacity with optional steps, and random trouble:
slowdowns of x2-x10 with recovery, fast-failing error bursts, short outages. Static weights
are mostly left at 1, as operators often leave them, sometimes set to match capacity and
sometimes set wrong. The offered load is kept to about 100k requests per scenario so a
simulated run takes well under a second.
"""
import argparse
import math
import random
from pathlib import Path

MAX_REQUESTS = 100_000


def fmt(x):
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def mean_service(median_ms, jitter):
    return median_ms * math.exp(jitter * jitter / 2.0)


def make_scenario(rng: random.Random, index: int, seed: int) -> str:
    duration = rng.choice([60, 75, 90, 105, 120])
    warmup = 10
    n_total = rng.randint(2, 12)

    # Backends come in groups of identical copies (`count`).
    groups = []
    remaining = n_total
    equal_conc = rng.random() < 0.3
    equal_service = rng.random() < 0.5
    equal_jitter = rng.random() < 0.7
    base_conc = int(round(math.exp(rng.uniform(0, math.log(32)))))
    base_service = rng.uniform(10, 80)
    base_jitter = rng.uniform(0.2, 0.6)
    while remaining > 0:
        count = min(remaining, rng.choice([1, 1, 1, 2, 2, 3, 4, 6]))
        remaining -= count
        conc = base_conc if equal_conc else int(round(math.exp(rng.uniform(0, math.log(32)))))
        service = base_service if equal_service else rng.uniform(10, 80)
        jitter = base_jitter if equal_jitter else rng.uniform(0.2, 0.6)
        groups.append({"name": f"g{len(groups) + 1}", "count": count, "concurrency": max(1, conc),
                       "service_ms": service, "service_jitter": jitter, "error_rate": 0.0,
                       "events": []})

    def capacity():
        return sum(g["count"] * g["concurrency"] / mean_service(g["service_ms"], g["service_jitter"]) * 1000.0
                   for g in groups)

    # Load profile as fractions of capacity.
    loads = [rng.uniform(0.3, 0.97)]
    steps_at = []
    if rng.random() < 0.4:
        k = rng.randint(1, 5)
        steps_at = sorted(rng.sample(range(warmup, duration - 10, 5), k))
        loads += [rng.uniform(0.3, 0.97) for _ in steps_at]
    max_rate = MAX_REQUESTS / duration
    # Keep the request count bounded: thin out concurrency, then slow service, if needed.
    for _ in range(20):
        if capacity() * max(loads) <= max_rate:
            break
        scale = max(0.5, max_rate / (capacity() * max(loads)))
        for g in groups:
            if g["concurrency"] > 1:
                g["concurrency"] = max(1, int(g["concurrency"] * scale))
            elif g["service_ms"] < 80:
                g["service_ms"] = min(80.0, g["service_ms"] / scale)
    cap = capacity()
    rate = min(loads[0] * cap, max_rate)
    steps = [[a, round(min(l * cap, max_rate), 2)] for a, l in zip(steps_at, loads[1:])]

    # Static weights: mostly untuned, sometimes matching capacity, sometimes wrong.
    r = rng.random()
    for g in groups:
        if r < 0.65:
            g["weight"] = 1
        elif r < 0.85:
            g["weight"] = max(1, int(round(g["concurrency"] / mean_service(g["service_ms"], g["service_jitter"]) * 100)))
        else:
            g["weight"] = rng.randint(1, 5)

    # Copy names as fulcrum expands them.
    def names(g):
        return [g["name"]] if g["count"] == 1 else [f"{g['name']}-{i}" for i in range(1, g["count"] + 1)]

    def window(min_len, max_len):
        at = rng.uniform(warmup - 5, duration - min_len)
        until = min(duration, at + rng.uniform(min_len, max_len))
        return round(at, 1), round(until, 1)

    n_events = rng.choice([0, 0, 1, 1, 2, 3, 4])
    for _ in range(n_events):
        g = rng.choice(groups)
        only = rng.sample(names(g), rng.randint(1, max(1, min(2, g["count"]))))
        kind = rng.random()
        ev = {}
        if kind < 0.5:
            at, until = window(8, 40)
            ev = {"at_s": at, "until_s": until, "slowdown": round(rng.uniform(2, 10), 2)}
        elif kind < 0.85:
            if rng.random() < 0.3:
                at, until = 0.0, float(duration)
            else:
                at, until = window(10, 50)
            ev = {"at_s": at, "until_s": until, "error_rate": round(rng.uniform(0.1, 0.6), 3)}
        else:
            at, until = window(5, 20)
            ev = {"at_s": at, "until_s": until, "down": True}
        if g["count"] > 1:
            ev["only"] = only
        g["events"].append(ev)

    lines = [
        f'name = "train-{seed}-{index:04d}"',
        f'description = "Randomised training scenario {index} of seed {seed}."',
        f"seed = {rng.randint(1, 2**31)}",
        f"duration_s = {duration}",
        f"warmup_s = {warmup}",
        "",
        "[load]",
        f"rate_rps = {rate:.2f}",
    ]
    if steps:
        lines.append("steps = [" + ", ".join(f"[{a}, {r:.2f}]" for a, r in steps) + "]")
    lines.append(f"non_idempotent_fraction = {rng.uniform(0, 0.4) if rng.random() < 0.6 else 0.0:.3f}")
    for g in groups:
        lines += ["", "[[backends]]", f'name = "{g["name"]}"', f"count = {g['count']}",
                  f"concurrency = {g['concurrency']}", f"service_ms = {g['service_ms']:.3f}",
                  f"service_jitter = {g['service_jitter']:.3f}", "error_ms = 0.5",
                  f"weight = {g['weight']}"]
        for ev in sorted(g["events"], key=lambda e: e["at_s"]):
            lines += ["", "[[backends.events]]"]
            for k, v in ev.items():
                if k == "only":
                    lines.append("only = [" + ", ".join(f'"{n}"' for n in v) + "]")
                elif isinstance(v, bool):
                    lines.append(f"{k} = {'true' if v else 'false'}")
                else:
                    lines.append(f"{k} = {fmt(v)}")
    return "\n".join(lines) + "\n"


def generate(seed: int, count: int, out: Path) -> list[Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = out / f"train-{seed}-{i:04d}.toml"
        p.write_text(make_scenario(rng, i, seed))
        paths.append(p)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=150)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    for p in generate(a.seed, a.count, a.out):
        print(p)


if __name__ == "__main__":
    main()
