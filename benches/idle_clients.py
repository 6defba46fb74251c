#!/usr/bin/env python3
"""Opens many idle PostgreSQL client sessions and reports a server process's memory per session.

Used by benches/pgbench.sh to compare lakebase-proxy (--lazy-attach) with PgBouncer: connects
clients in stages (e.g. 1000, then 9000 more for 10000), each completing a protocol-3.0 login
with no password (the target must trust loopback) up to ReadyForQuery, then holds them idle.
After each stage it waits for the target to settle and reads VmRSS of --pid from
/proc/PID/status; growth is reported against the value before the first client.

Standard library only (asyncio), so it runs on any python3 >= 3.8. Needs `ulimit -n` above the
largest count (the script raises it).

Output: one line per stage on stdout, tab separated:
    STAGE <clients> <rss_before_kib> <rss_kib> <kib_per_client> <seconds_to_connect> <report>
and after closing every client:
    CLOSED <clients> <rss_before_kib> <rss_kib>
where <report> is the stripped output of --report-cmd (run with sh -c), or "-".
Exit status 1 if any client failed to log in.
"""

import argparse
import asyncio
import struct
import subprocess
import sys
import time


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", 3 << 16)
    for key, value in (("user", user), ("database", database), ("application_name", "idle_clients")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def login(host, port, packet, timeout):
    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(packet)
        await writer.drain()
        while True:
            header = await reader.readexactly(5)
            tag, length = header[0:1], struct.unpack("!I", header[1:5])[0]
            body = await reader.readexactly(length - 4)
            if tag == b"E":
                raise RuntimeError("login refused: " + body.decode(errors="replace"))
            if tag == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise RuntimeError("the target asked for a password")
            if tag == b"Z":
                return reader, writer

    return await asyncio.wait_for(go(), timeout)


async def open_clients(count, args, packet, held):
    semaphore = asyncio.Semaphore(args.concurrency)
    failures = []

    async def one():
        async with semaphore:
            try:
                held.append(await login(args.host, args.port, packet, args.timeout))
            except Exception as error:  # noqa: BLE001 - reported below
                failures.append(error)

    await asyncio.gather(*(one() for _ in range(count)))
    return failures


def report(cmd):
    if not cmd:
        return "-"
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30).stdout.strip()
    return out.replace("\t", " ").replace("\n", " ") or "-"


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="bench")
    parser.add_argument("--dbname", default="bench")
    parser.add_argument("--pid", type=int, required=True, help="process whose VmRSS is measured")
    parser.add_argument("--counts", default="1000,10000", help="cumulative client counts, ascending")
    parser.add_argument("--concurrency", type=int, default=100, help="logins in flight at once")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading VmRSS")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per login")
    parser.add_argument("--report-cmd", default="", help="shell command whose output is added to each stage")
    args = parser.parse_args()

    counts = [int(c) for c in args.counts.split(",") if c]
    packet = startup_packet(args.user, args.dbname)
    await asyncio.sleep(args.settle)
    base = vm_rss_kib(args.pid)
    held = []
    status = 0
    for count in counts:
        started = time.monotonic()
        failures = await open_clients(count - len(held), args, packet, held)
        elapsed = time.monotonic() - started
        if failures:
            print(f"{len(failures)} of {count} logins failed; first: {failures[0]!r}", file=sys.stderr)
            status = 1
            break
        await asyncio.sleep(args.settle)
        rss = vm_rss_kib(args.pid)
        per_client = (rss - base) / len(held)
        print(f"STAGE\t{len(held)}\t{base}\t{rss}\t{per_client:.2f}\t{elapsed:.2f}\t{report(args.report_cmd)}", flush=True)
    total = len(held)
    for reader, writer in held:
        try:
            writer.write(b"X\0\0\0\4")  # Terminate
            writer.close()
        except Exception:  # noqa: BLE001 - the target may have closed it already
            pass
    for reader, writer in held:
        try:
            await writer.wait_closed()
        except Exception:  # noqa: BLE001
            pass
    held.clear()
    await asyncio.sleep(args.settle)
    print(f"CLOSED\t{total}\t{base}\t{vm_rss_kib(args.pid)}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
