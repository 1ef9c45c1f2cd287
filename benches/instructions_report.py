#!/usr/bin/env python3
"""Instructions per request, by proxy: the report of `peer-compare.sh` with INSTRUCTIONS=1.

Reads, for each proxy and each run N, what the script collected:
  NAME.N.callgrind  callgrind's dump of the measured window (its `totals:` line)
  NAME.N.wrk        wrk's output of that window (the number of requests completed)
  NAME.N.annotate   `callgrind_annotate` of the dump: self instructions by function
  NAME.N.callers    `callgrind_annotate --tree=caller`: who called each function, and how much
and writes Markdown: instructions per request of every run and their ratios to bare pingora
and nginx, the first run's instructions split into the parts of `cost_breakdown.py` (allocator,
memory copies, the proxy's own code, pingora, tokio, ...), each proxy's top functions, and the
largest callers of memcpy/memmove (a move of a large value, such as a future being boxed,
shows up there as one caller copying kilobytes per request).

Usage: instructions_report.py WORKDIR PROXY... > report.md
"""

import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_breakdown import bucket_of  # noqa: E402  (one classification for both reports)

REGISTRY = re.compile(r"/root/\.cargo/registry/src/[^/]+/|/rustc/[0-9a-f]+/|\S*/vendor/")
COPY_FN = re.compile(r"__(memcpy|memmove)\w*")
LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(?:\*\s+)?(.*?)(?:\s+\[([^\]]+)\])?\s*$")


def totals(path: Path) -> int:
    m = re.search(r"^(?:totals|summary): (\d+)", path.read_text(), re.M)
    if not m:
        raise SystemExit(f"no totals in {path}")
    return int(m.group(1))


def requests(path: Path) -> int:
    m = re.search(r"^\s*(\d+) requests in", path.read_text(), re.M)
    if not m:
        raise SystemExit(f"no request count in {path}")
    return int(m.group(1))


def functions(path: Path):
    """(instructions, file:function, object) of every function line of an annotation."""
    text = path.read_text()
    body = text.split("file:function", 1)[-1].split("\n", 2)[-1]  # past the header's rule
    for line in body.splitlines():
        if line.startswith("---"):
            break  # the end of the function list (auto-annotated sources may follow)
        m = LINE.match(line)
        if m and ":" in m.group(2):
            yield int(m.group(1).replace(",", "")), m.group(2), (m.group(3) or "")


def copies(path: Path) -> int:
    """Self instructions of the memcpy/memmove routines in an annotation."""
    return sum(ir for ir, fn, _ in functions(path) if COPY_FN.search(symbol(fn)))


def symbol(file_fn: str) -> str:
    return file_fn.split(":", 1)[1] if ":" in file_fn else file_fn


def short(sym: str, width: int = 110) -> str:
    s = REGISTRY.sub("", sym)
    return s if len(s) <= width else s[: width - 1] + "…"


def part(file_fn: str, obj: str) -> str:
    dso = Path(obj).name if obj else ""
    sym = symbol(file_fn)
    if not dso and COPY_FN.search(sym):
        dso = "libc.so.6"
    b = bucket_of(dso or "binary", "u", sym)
    return "other code in the binary" if b == "binary, other" else b


def copy_callers(path: Path) -> dict:
    """Instructions of memcpy/memmove by caller function."""
    out = defaultdict(int)
    block = []
    for line in path.read_text().splitlines():
        if not line.strip():
            block = []
            continue
        block.append(line)
        m = LINE.match(line)
        if m and "*" in line.split(")", 1)[-1][:4] and COPY_FN.search(m.group(2)):
            for caller in block[:-1]:
                c = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+<\s+(.*?)(?:\s+\(\d[\d,]*x\))?(?:\s+\[[^\]]+\])?\s*$", caller)
                if c:
                    out[symbol(c.group(2))] += int(c.group(1).replace(",", ""))
    return out


def main() -> None:
    workdir, proxies = Path(sys.argv[1]), sys.argv[2:]
    runs = {p: sorted(workdir.glob(f"{p}.*.callgrind"), key=lambda x: int(x.name.split(".")[-2])) for p in proxies}
    per_req = {}
    no_copy = {}
    for p in proxies:
        per_req[p] = [totals(c) / requests(c.with_suffix(".wrk")) for c in runs[p]]
        no_copy[p] = [
            (totals(c) - copies(c.with_suffix(".annotate"))) / requests(c.with_suffix(".wrk"))
            for c in runs[p]
        ]
    med = {p: statistics.median(v) for p, v in per_req.items()}
    med_nc = {p: statistics.median(v) for p, v in no_copy.items()}

    print("## Instructions per request")
    print()
    print("A large memcpy/memmove is one `rep movsb`, which callgrind counts one instruction per")
    print("byte moved while the CPU moves 32 or 64 bytes a cycle: the second half of the table")
    print("leaves the copy routines out, and is the fairer measure of work between proxies whose")
    print("copies differ in size.")
    print()
    refs = [r for r in ("bare-pingora", "bare-pingora-patched", "nginx") if r in med]
    head = ["proxy", "runs (instructions / request)", "median", *(f"/ {r}" for r in refs),
            "without memcpy/memmove: median", *(f"/ {r}" for r in refs)]
    print("| " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * (len(head) - 2))
    for p in proxies:
        cells = [p, ", ".join(f"{v:,.0f}" for v in per_req[p]), f"**{med[p]:,.0f}**",
                 *(f"{med[p] / med[r]:.3f}×" for r in refs), f"**{med_nc[p]:,.0f}**",
                 *(f"{med_nc[p] / med_nc[r]:.3f}×" for r in refs)]
        print("| " + " | ".join(cells) + " |")
    print()

    # The first run's split into parts and top functions.
    split = {}
    tops = {}
    for p in proxies:
        first = runs[p][0]
        n = requests(first.with_suffix(".wrk"))
        parts = defaultdict(float)
        fns = defaultdict(float)
        for ir, fn, obj in functions(first.with_suffix(".annotate")):
            parts[part(fn, obj)] += ir / n
            fns[(short(symbol(fn)), part(fn, obj))] += ir / n
        split[p] = parts
        tops[p] = sorted(fns.items(), key=lambda kv: -kv[1])[:15]
    names = sorted({k for s in split.values() for k in s}, key=lambda k: -max(s.get(k, 0) for s in split.values()))
    print("## Where they go: instructions per request by part (first run)")
    print()
    print("| part | " + " | ".join(proxies) + " |")
    print("|---|" + "---:|" * len(proxies))
    for k in names:
        print(f"| {k} | " + " | ".join(f"{split[p].get(k, 0):,.0f}" for p in proxies) + " |")
    print("| **all** | " + " | ".join(f"**{sum(split[p].values()):,.0f}**" for p in proxies) + " |")
    print()

    print("## The largest callers of memcpy/memmove (first run)")
    print()
    print("A caller that copies kilobytes per request is moving a large value: with `rep movsb`,")
    print("callgrind counts one instruction per byte, so these are also roughly bytes per request.")
    print()
    for p in proxies:
        first = runs[p][0]
        n = requests(first.with_suffix(".wrk"))
        callers = sorted(copy_callers(first.with_suffix(".callers")).items(), key=lambda kv: -kv[1])[:8]
        if not callers:
            continue
        print(f"### {p}")
        print()
        print("| instructions / request | caller |")
        print("|---:|---|")
        for fn, ir in callers:
            print(f"| {ir / n:,.0f} | `{short(fn, 140)}` |")
        print()

    print("## Top functions by self instructions per request (first run)")
    for p in proxies:
        print()
        print(f"### {p}")
        print()
        print("| instructions / request | part | function |")
        print("|---:|---|---|")
        for (fn, pt), ir in tops[p]:
            print(f"| {ir:,.0f} | {pt} | `{fn}` |")


if __name__ == "__main__":
    main()
