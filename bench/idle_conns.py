#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one GET on each, reads the answer, and keeps them all open.

Prints "ready" once every connection has been answered, then waits for a line on stdin (or at most --hold
seconds) before closing them. The caller measures the proxy's memory while they are held. With --tls the
connections are TLS (the certificate is not verified: the point is the proxy's memory per idle session).
"""
import argparse
import asyncio
import ssl
import sys


async def one(host, port, request, opened, failures, tls):
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        opened.append(writer)
    except Exception as e:  # noqa: BLE001 - counted and reported
        failures.append(repr(e))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=120)
    ap.add_argument("--tls", action="store_true")
    a = ap.parse_args()
    tls = None
    if a.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    request = f"GET / HTTP/1.1\r\nHost: {a.host}\r\n\r\n".encode()
    opened, failures = [], []
    batch = 500
    for start in range(0, a.n, batch):
        await asyncio.gather(*(one(a.host, a.port, request, opened, failures, tls) for _ in range(start, min(a.n, start + batch))))
    print(f"ready {len(opened)} open, {len(failures)} failed", flush=True)
    if failures:
        print("first failure:", failures[0], file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), a.hold)
    except asyncio.TimeoutError:
        pass
    for w in opened:
        w.close()


asyncio.run(main())
