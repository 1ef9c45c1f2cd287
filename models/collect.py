"""Collect training data for fulcrum's weight model from the simulator.

    .venv/bin/python models/collect.py --seed 1 --count 150 --out models/data/train.csv
    .venv/bin/python models/collect.py --seed 2 --count 40 --out models/data/heldout.csv

Generates randomised scenarios (models/scenarios.py) and runs `fulcrum sim --export-features`
on each, one behaviour policy per scenario in rotation, so the features cover the weights the
controller produces in deployment (heuristic-tuned least-connections and P2C-EWMA) as well as
static weights. With `--model`, `+model` policies are driven by that model instead of the
heuristic, which adds the states a model's own weights lead to. Rows are concatenated into
one CSV: scenario, policy, seed, t_s, backend, the 16 features of fulcrum-features-v1 and the
simulator's ground truth (true_concurrency, true_service_ms, true_error_rate, true_down,
queue_len, busy).
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "target" / "release" / "fulcrum"

# (policy, driven by the controller?) in rotation.
BEHAVIOURS = [
    ("least_connections+model", True),
    ("p2c_ewma+model", True),
    ("least_connections", False),
    ("least_connections+model", True),
    ("p2c_ewma+model", True),
]


def run(binary: Path, scenario: Path, policy: str, controlled: bool, model: Path | None, out: Path):
    cmd = [str(binary), "sim", "--scenario", str(scenario), "--policy", policy,
           "--export-features", str(out)]
    if controlled:
        cmd += ["--model", str(model)] if model else ["--heuristic"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def collect(seed: int, count: int, out: Path, binary: Path, model: Path | None, offset: int = 0):
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with tempfile.TemporaryDirectory(prefix="fulcrum-collect-") as tmp:
        tmp = Path(tmp)
        paths = scenarios.generate(seed, count, tmp / "scenarios")
        with open(out, "w") as sink:
            header_written = False
            for i, path in enumerate(paths):
                policy, controlled = BEHAVIOURS[(i + offset) % len(BEHAVIOURS)]
                part = tmp / f"{i}.csv"
                run(binary, path, policy, controlled, model, part)
                with open(part) as f:
                    header = f.readline()
                    if not header_written:
                        sink.write(header)
                        header_written = True
                    for line in f:
                        sink.write(line)
                        rows += 1
                part.unlink()
    print(f"{out}: {rows} rows from {count} scenarios (seed {seed})", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=150)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "data" / "train.csv")
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("FULCRUM_BIN", DEFAULT_BIN)))
    ap.add_argument("--model", type=Path, default=None,
                    help="drive +model policies with this ONNX model instead of the heuristic")
    ap.add_argument("--offset", type=int, default=0, help="rotate the behaviour policies")
    a = ap.parse_args()
    collect(a.seed, a.count, a.out, a.bin, a.model, a.offset)


if __name__ == "__main__":
    main()
