#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to HOST:PORT, complete one GET on each, hold them.

Used by benches/idle-memory.sh. Each connection sends `GET / HTTP/1.1` (keep-alive is the
HTTP/1.1 default), reads the whole response (Content-Length or chunked), and stays open, so
the server holds a real idle keep-alive session for it, not a half-open socket.

Prints `ready OPEN FAILED` on stdout once every connection has been tried, then holds them
until stdin closes (or a line is read), then prints `alive N` (connections the server had not
closed meanwhile, tested without writing) and exits.

Usage: idle_conns.py HOST PORT N [PARALLEL]
"""

import asyncio
import sys


async def read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"unexpected status line {status!r}")
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            raise RuntimeError("server answered Connection: close")
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        raise RuntimeError("response without a length cannot be kept alive")


async def open_one(host, port, sem, conns, errors):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: idle-conns\r\n\r\n".encode())
            await writer.drain()
            await asyncio.wait_for(read_response(reader), 30)
            conns.append((reader, writer))
        except Exception as e:  # noqa: BLE001 - every failure is counted and one is shown
            if not errors:
                print(f"idle_conns: first failure: {e!r}", file=sys.stderr)
            errors.append(e)


async def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    parallel = int(sys.argv[4]) if len(sys.argv) == 5 else 64
    sem = asyncio.Semaphore(parallel)
    conns, errors = [], []
    await asyncio.gather(*(open_one(host, port, sem, conns, errors) for _ in range(n)))
    print(f"ready {len(conns)} {len(errors)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    # A connection the server closed has EOF (or an error) waiting to be read.
    alive = sum(1 for r, _ in conns if not r.at_eof() and r.exception() is None)
    print(f"alive {alive}", flush=True)
    for _, w in conns:
        w.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
