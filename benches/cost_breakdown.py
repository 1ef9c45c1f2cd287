#!/usr/bin/env python3
"""Where a proxy's CPU goes, per request: the report of `peer-compare.sh` with BREAKDOWN=1.

Reads, for each proxy, what the script collected over one fixed run of wrk:
  NAME.stat   `perf stat -x,` of every syscall tracepoint and the libc allocator probes
  NAME.wrk    wrk's output (the number of requests completed)
  NAME.report `perf report --no-children --sort dso,sym --stdio` of a sampled profile
and writes one Markdown report: syscalls per request by kind, allocator calls per request, and
the profile split into kernel, allocator, memory copies, the proxy's own code, its frameworks
(pingora, tokio, HTTP libraries), the Rust standard library and the rest.

Usage: cost_breakdown.py WORKDIR PROXY... > report.md
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

# Which bucket a sampled symbol falls in, checked in this order. The first two match the
# symbol's object (dso), the rest the symbol's name.
ALLOCATOR = re.compile(
    r"(^|[^a-z])(malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|_int_realloc|"
    r"malloc_consolidate|tcache|arena_get|sysmalloc|unlink_chunk|je_|jemalloc|mi_|__rust_alloc|"
    r"__rust_dealloc|__rust_realloc)"
)
COPIES = re.compile(r"(memmove|memcpy|memset|memcmp|__memchr|strlen|bcmp)")
FRAMEWORKS = [
    ("fulcrum", re.compile(r"fulcrum")),
    ("pingora", re.compile(r"pingora")),
    ("tokio", re.compile(r"tokio|mio::")),
    ("http libraries (httparse, http, h2, bytes)", re.compile(r"httparse|\bhttp::|\bh2::|bytes::")),
    ("metrics", re.compile(r"metrics")),
    ("Rust core/alloc/std", re.compile(r"\b(core|alloc|std|hashbrown)::")),
]


def per_request_requests(workdir: Path, name: str) -> int:
    text = (workdir / f"{name}.wrk").read_text()
    m = re.search(r"^\s*(\d+) requests in", text, re.M)
    if not m:
        raise SystemExit(f"{name}: no request count in {name}.wrk")
    return int(m.group(1))


def counts(workdir: Path, name: str) -> dict:
    out = {}
    for line in (workdir / f"{name}.stat").read_text().splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].strip().replace(".", "").isdigit():
            continue
        out[fields[2]] = float(fields[0])
    return out


def samples(workdir: Path, name: str):
    """(share %, dso, kind, symbol) of every line of the profile, largest first."""
    for line in (workdir / f"{name}.report").read_text().splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
        if m:
            yield float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()


def bucket_of(dso: str, kind: str, sym: str) -> str:
    if kind == "k" or dso.startswith("[kernel"):
        return "kernel"
    if ALLOCATOR.search(sym):
        return "allocator (malloc/free)"
    if COPIES.search(sym):
        return "memory copies (memmove/memcpy/memset)"
    if dso.startswith("libc"):
        return "libc, other"
    bucket = next((b for b, pat in FRAMEWORKS if pat.search(sym)), None)
    if bucket is not None:
        return bucket
    if dso.startswith(("fulcrum", "bare_pingora")):
        return "other code in the binary"
    return f"{dso}, other"


def profile(workdir: Path, name: str) -> dict:
    split = defaultdict(float)
    for share, dso, kind, sym in samples(workdir, name):
        split[bucket_of(dso, kind, sym)] += share
    return split


def main() -> None:
    workdir, proxies = Path(sys.argv[1]), sys.argv[2:]
    requests = {p: per_request_requests(workdir, p) for p in proxies}
    stats = {p: counts(workdir, p) for p in proxies}
    profiles = {p: profile(workdir, p) for p in proxies}

    print("## Syscalls per request")
    print()
    print("| syscall | " + " | ".join(proxies) + " |")
    print("|---|" + "---:|" * len(proxies))
    names = sorted(
        {k for s in stats.values() for k in s if k.startswith("syscalls:")},
        key=lambda k: -max(stats[p].get(k, 0) / requests[p] for p in proxies),
    )
    totals = defaultdict(float)
    for k in names:
        row = [stats[p].get(k, 0) / requests[p] for p in proxies]
        for p, v in zip(proxies, row):
            totals[p] += v
        if max(row) >= 0.005:
            label = k.removeprefix("syscalls:sys_enter_")
            print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    print("| **all** | " + " | ".join(f"**{totals[p]:.2f}**" for p in proxies) + " |")
    print()
    print("## Allocator calls per request (libc, counted by uprobes)")
    print()
    print("| call | " + " | ".join(proxies) + " |")
    print("|---|" + "---:|" * len(proxies))
    for call in ("malloc", "calloc", "realloc", "free"):
        key = f"probe_libc:{call}"
        print(f"| {call} | " + " | ".join(f"{stats[p].get(key, 0) / requests[p]:.2f}" for p in proxies) + " |")
    print()
    cpu = {p: float((workdir / f"{p}.cpu").read_text()) for p in proxies}
    print("## Where the CPU goes: µs per request (share of the proxy's samples)")
    print()
    buckets = sorted(
        {b for s in profiles.values() for b in s},
        key=lambda b: -max(profiles[p].get(b, 0) * cpu[p] for p in proxies),
    )
    print("| part | " + " | ".join(proxies) + " |")
    print("|---|" + "---:|" * len(proxies))
    for b in buckets:
        cells = []
        for p in proxies:
            share = profiles[p].get(b, 0)
            total = sum(profiles[p].values()) or 1
            cells.append(f"{cpu[p] * share / total:.2f} ({share:.0f} %)")
        print(f"| {b} | " + " | ".join(cells) + " |")
    print("| **all** | " + " | ".join(f"**{cpu[p]:.2f}**" for p in proxies) + " |")
    print()
    for p in proxies:
        print(f"### Top user-space symbols: {p}")
        print()
        print("| % | part | symbol |")
        print("|---:|---|---|")
        top = [x for x in samples(workdir, p) if x[2] != "k"][:15]
        for share, dso, kind, sym in top:
            short = sym if len(sym) <= 110 else sym[:107] + "..."
            print(f"| {share:.2f} | {bucket_of(dso, kind, sym)} | `{short.replace('|', '/')}` |")
        print()
    print("Requests counted: " + ", ".join(f"{p} {requests[p]}" for p in proxies) + ".")


if __name__ == "__main__":
    main()
