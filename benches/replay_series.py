#!/usr/bin/env python3
"""Write the recorded series that benches/replay.sh replays, as `t_s,rps` rows at a fixed step
(the format of `fulcrum forecast --input`, of a pool's `history_file` and of a scenario's
`load.trace`).

  replay_series.py counted TIMELINE.csv OUT.csv
      the arrivals the simulator counted per step (a `TIMELINE_CSV=1` timeline of
      crates/sim/examples/autoscale.rs), as a proxy's history_file records them
  replay_series.py taylor CACHE_DIR OUT.csv STEP_S WEEKS
      Taylor's half-hourly electricity demand in England and Wales, Monday 5 June to
      Sunday 27 August 2000 (Taylor 2003, J. Oper. Res. Soc. 54, 799-805), in megawatts, as
      the PyPI package pmdarima ships it (pmdarima.datasets.load_taylor); the first WEEKS
      weeks, one row per half hour, STEP_S seconds apart. The wheel is downloaded into
      CACHE_DIR once; the data is not committed.
"""
import csv
import glob
import os
import re
import subprocess
import sys
import zipfile

PMDARIMA = "pmdarima==2.1.1"


def write(out, rows):
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rps"])
        for t, r in rows:
            w.writerow([f"{t:g}", f"{r:g}"])


def counted(timeline, out):
    with open(timeline) as f:
        rows = [(float(r["t_s"]), float(r["arrivals_rps"])) for r in csv.DictReader(f)]
    write(out, rows)


def taylor(cache, out, step_s, weeks):
    os.makedirs(cache, exist_ok=True)
    wheels = glob.glob(os.path.join(cache, "pmdarima-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", cache, PMDARIMA]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"replay_series: `{' '.join(cmd)}` failed (no network or no package index?)")
        wheels = glob.glob(os.path.join(cache, "pmdarima-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        src = z.read("pmdarima/datasets/taylor.py").decode()
    body = re.search(r"np\.array\(\[(.*?)\]\)", src, re.S)
    if not body:
        sys.exit("replay_series: the series was not found in pmdarima/datasets/taylor.py")
    mw = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", body.group(1))]
    if len(mw) != 4032:
        sys.exit(f"replay_series: expected 4,032 half-hours, got {len(mw)}")
    mw = mw[: int(weeks) * 7 * 48]
    write(out, [(i * float(step_s), v) for i, v in enumerate(mw)])


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    {"counted": counted, "taylor": taylor}[kind](*args)
