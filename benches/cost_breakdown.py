#!/usr/bin/env python3
"""Where a proxy's CPU goes, per request: the report of `peer-compare.sh` with BREAKDOWN=1.

Reads, for each proxy, what the script collected over three runs of wrk:
  NAME.stat        `perf stat -x,` of every syscall tracepoint and the software events
  NAME.wrk         wrk's output of that run (the number of requests completed)
  NAME.alloc.stat  `perf stat -x,` of the allocator uprobes: libc's malloc family
                   (probe_libc:*) and, for binaries built with mimalloc, its entry points in the
                   binary (probe_mi:*)
  NAME.alloc.wrk   wrk's output of that run
  NAME.report      `perf report --no-children --sort dso,sym --stdio` of a sampled profile
  NAME.cpu         the proxy's CPU µs per request over the profiled run
and writes one Markdown report: syscalls per request by kind, scheduler and network events per
request, allocator calls per request, the profile split into kernel, allocator, memory copies,
the proxy's own code, its frameworks (pingora, tokio, HTTP libraries), the Rust standard
library and the rest, and the kernel's share split by area and by symbol.

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

# Areas of the kernel's share, by symbol name, checked in this order (copies before sk buffers,
# wakeups before TCP: `skb_copy_datagram_iter` is a copy, `sock_def_readable` a wakeup).
KERNEL_AREAS = [
    ("syscall entry and exit", re.compile(
        r"entry_SYSCALL|do_syscall|syscall_exit|exit_to_user|syscall_return|x64_sys_call|"
        r"fpregs|fpu|irqentry|__x64_sys_|__sys_(recvfrom|sendto|writev|getpeername|getsockopt)")),
    ("copies to and from user space", re.compile(
        r"copy_user|copy_to_iter|copy_from_iter|copy_to_user|copy_from_user|skb_copy_datagram|"
        r"memcpy|memset|memmove|rep_movs|simple_copy|check_object_size|check_heap_object")),
    ("epoll and wakeups", re.compile(
        r"^ep_|epoll|__wake_up|try_to_wake_up|ttwu|wake_up|default_wake|sock_def_readable|pollwake")),
    ("scheduler", re.compile(
        r"schedule|pick_next|switch_to|finish_task_switch|update_curr|enqueue|dequeue|"
        r"select_task_rq|psi_|sched_|update_load|put_prev|set_next|hrtimer|cpuacct|cgroup")),
    ("socket buffers and kernel memory", re.compile(
        r"skb|kmem_cache|kmalloc|kfree|__alloc_pages|page_frag|slab|alloc_pages|free_pages|"
        r"memcg|mem_cgroup|obj_cgroup|refill_obj")),
    ("softirq", re.compile(r"softirq|local_bh|__do_softirq|net_rx_action|process_backlog|napi")),
    ("TCP, IP and loopback", re.compile(
        r"tcp|^ip_|inet|^sock_|^sk_|release_sock|lock_sock|loopback|dev_|netif|nf_|ipv4|"
        r"security_socket|qdisc|validate_xmit|__sock|sockfd|fdget|__fget|fput|bpf|neigh|dst_|"
        r"eth_|raw_v4|rt_|fib_")),
    ("locks and RCU", re.compile(r"spin_lock|spin_unlock|mutex|rcu|queued_|_raw_")),
]


def kernel_area(sym: str) -> str:
    return next((a for a, pat in KERNEL_AREAS if pat.search(sym)), "other kernel")


def per_request_requests(workdir: Path, name: str, run: str = "wrk") -> int:
    text = (workdir / f"{name}.{run}").read_text()
    m = re.search(r"^\s*(\d+) requests in", text, re.M)
    if not m:
        raise SystemExit(f"{name}: no request count in {name}.wrk")
    return int(m.group(1))


def counts(workdir: Path, name: str, run: str = "stat") -> dict:
    out = {}
    path = workdir / f"{name}.{run}"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
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
    alloc_requests = {p: per_request_requests(workdir, p, "alloc.wrk") for p in proxies}
    stats = {p: counts(workdir, p) for p in proxies}
    allocs = {p: counts(workdir, p, "alloc.stat") for p in proxies}
    profiles = {p: profile(workdir, p) for p in proxies}
    cpu = {p: float((workdir / f"{p}.cpu").read_text()) for p in proxies}
    totals_of = {p: sum(profiles[p].values()) or 1 for p in proxies}

    def header(first: str) -> None:
        print(f"| {first} | " + " | ".join(proxies) + " |")
        print("|---|" + "---:|" * len(proxies))

    print("## Syscalls per request")
    print()
    header("syscall")
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
    soft = sorted({k for s in stats.values() for k in s if not k.startswith("syscalls:")})
    if soft:
        print("## Scheduler, memory and network events per request (while the proxy's threads run)")
        print()
        header("event")
        for k in soft:
            print(f"| {k} | " + " | ".join(f"{stats[p].get(k, 0) / requests[p]:.3f}" for p in proxies) + " |")
        print()
    print("## Allocator calls per request (uprobes: libc's malloc family; mimalloc's entry points in the binary)")
    print()
    header("call")
    rows = [
        ("libc malloc", "probe_libc:malloc"),
        ("libc calloc", "probe_libc:calloc"),
        ("libc realloc", "probe_libc:realloc"),
        ("libc free", "probe_libc:free"),
        ("mimalloc mi_malloc", "probe_mi:mi_malloc"),
        ("mimalloc mi_zalloc", "probe_mi:mi_zalloc"),
        ("mimalloc mi_realloc", "probe_mi:mi_realloc"),
        ("mimalloc mi_malloc_aligned", "probe_mi:mi_malloc_aligned"),
        ("mimalloc mi_zalloc_aligned", "probe_mi:mi_zalloc_aligned"),
        ("mimalloc mi_realloc_aligned", "probe_mi:mi_realloc_aligned"),
        ("mimalloc mi_free", "probe_mi:mi_free"),
    ]
    per = {p: {k: allocs[p].get(k, 0) / alloc_requests[p] for _, k in rows} for p in proxies}
    for label, key in rows:
        if any(key in allocs[p] for p in proxies):
            print(f"| {label} | " + " | ".join(
                f"{per[p][key]:.2f}" if key in allocs[p] else "–" for p in proxies) + " |")
    new = {p: sum(per[p][k] for k in ("probe_libc:malloc", "probe_libc:calloc", "probe_mi:mi_malloc",
                                         "probe_mi:mi_zalloc", "probe_mi:mi_malloc_aligned",
                                         "probe_mi:mi_zalloc_aligned"))
           for p in proxies}
    print("| **allocations (malloc + calloc, either allocator)** | " + " | ".join(f"**{new[p]:.2f}**" for p in proxies) + " |")
    print()
    print("mimalloc's `mi_realloc` and `mi_realloc_aligned` free the old block through `mi_free` when they move it, so a moved")
    print("reallocation also counts one free. The requests counted under the probes are fewer (a probe hit costs")
    print("a trap), but the calls per request do not depend on speed.")
    print()
    print("## Where the CPU goes: µs per request (share of the proxy's samples)")
    print()
    buckets = sorted(
        {b for s in profiles.values() for b in s},
        key=lambda b: -max(profiles[p].get(b, 0) * cpu[p] for p in proxies),
    )
    header("part")
    for b in buckets:
        cells = []
        for p in proxies:
            share = profiles[p].get(b, 0)
            cells.append(f"{cpu[p] * share / totals_of[p]:.2f} ({share:.0f} %)")
        print(f"| {b} | " + " | ".join(cells) + " |")
    print("| **all** | " + " | ".join(f"**{cpu[p]:.2f}**" for p in proxies) + " |")
    print()
    kernel = {p: [(share, sym) for share, dso, kind, sym in samples(workdir, p)
                  if bucket_of(dso, kind, sym) == "kernel"] for p in proxies}

    def us(p: str, share: float) -> float:
        return cpu[p] * share / totals_of[p]

    print("## The kernel's share by area: µs per request")
    print()
    header("area")
    by_area = {p: defaultdict(float) for p in proxies}
    for p in proxies:
        for share, sym in kernel[p]:
            by_area[p][kernel_area(sym)] += us(p, share)
    for area in [a for a, _ in KERNEL_AREAS] + ["other kernel"]:
        print(f"| {area} | " + " | ".join(f"{by_area[p].get(area, 0):.2f}" for p in proxies) + " |")
    print("| **kernel** | " + " | ".join(f"**{sum(by_area[p].values()):.2f}**" for p in proxies) + " |")
    print()
    print("## The kernel's share by symbol: µs per request (each proxy's top 15)")
    print()
    top = []
    for p in proxies:
        for _, sym in kernel[p][:15]:
            if sym not in top:
                top.append(sym)
    by_sym = {p: defaultdict(float) for p in proxies}
    for p in proxies:
        for share, sym in kernel[p]:
            by_sym[p][sym] += us(p, share)
    top.sort(key=lambda sym: -by_sym[proxies[0]].get(sym, 0))
    print("| symbol | area | " + " | ".join(proxies) + " |")
    print("|---|---|" + "---:|" * len(proxies))
    for sym in top:
        print(f"| `{sym}` | {kernel_area(sym)} | " + " | ".join(f"{by_sym[p].get(sym, 0):.2f}" for p in proxies) + " |")
    rest = {p: sum(v for k, v in by_sym[p].items() if k not in top) for p in proxies}
    print("| every other kernel symbol | | " + " | ".join(f"{rest[p]:.2f}" for p in proxies) + " |")
    print()
    if "_raw_spin_unlock_irqrestore" in top:
        print(
            "`_raw_spin_unlock_irqrestore` is not lock contention. Time spent with interrupts off is\n"
            "charged to the instruction that turns them back on, and the call graph of these samples\n"
            "(`perf record -g -p PROXY`, `perf report --no-children -S _raw_spin_unlock_irqrestore -G`)\n"
            "is `sendto` → loopback transmit → softirq → `tcp_rcv_established` → `sock_def_readable`:\n"
            "waking the reader of the other end (wrk or the origin, on the other core). When that core\n"
            "is idle the wakeup sends an inter-processor interrupt (`ipi:ipi_send_cpu` above), which in a\n"
            "VM is an exit to the hypervisor. The slower a proxy, the more often the client's core has\n"
            "gone idle by the time the proxy sends, so this line grows with the proxy's own cost rather\n"
            "than with anything it does differently in the kernel."
        )
        print()
    for p in proxies:
        print(f"### Top user-space symbols: {p}")
        print()
        print("| % | part | symbol |")
        print("|---:|---|---|")
        top_user = [x for x in samples(workdir, p) if x[2] != "k"][:15]
        for share, dso, kind, sym in top_user:
            short = sym if len(sym) <= 110 else sym[:107] + "..."
            print(f"| {share:.2f} | {bucket_of(dso, kind, sym)} | `{short.replace('|', '/')}` |")
        print()
    print("Requests counted: " + ", ".join(f"{p} {requests[p]}" for p in proxies) + "; under the allocator probes: "
          + ", ".join(f"{p} {alloc_requests[p]}" for p in proxies) + ".")


if __name__ == "__main__":
    main()
