"""Benchmark: authorizations per second and latency of the acquirer host over TCP.

Starts `tillroll host serve` as its own process on a fresh database (SQLite by default, durable:
WAL with synchronous=FULL), registers signed-in terminals, then drives sales from `--concurrency`
connections for `--seconds`, and prints one JSON object.

    python bench/host_auth.py --concurrency 50 --seconds 20 [--db URL] [--pin] [--peer]
        [--workers N | --db-process | --one-process]

The host runs as `host serve` does by default (on SQLite with two cores: the database work in a
second process); `--db-process` and `--one-process` pass those flags on (`db_process` in the JSON
says which ran).
`--workers N` runs the host as `host serve --workers N` (N processes on one port; give `--db` an
empty PostgreSQL database).

The loader signs its sales before the clock starts and checks every answer (response code and
MAC) after it stops, so that its own work, on the same two cores, is not taken from the host's.
`--peer` then measures an approve-all mock issuer that does no work (`iso8583sim serve`, from
PyPI) twice: under this same loader, for the same time at the same concurrency (`peer_per_s`,
and `host_to_peer` = host authorizations/s ÷ that), and under iso8583sim's own loader
(`iso8583sim load`, one connection per request in flight, as many requests as the host
answered: `peer_load_per_s`, `host_to_peer_load`). The machine is usually shared: the JSON
carries the CPU time the host (all of its processes) and the loader spent during the measured
run, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from tillroll.crypto import encrypt_pin_block, unwrap_working_keys
from tillroll.crypto.keys import WorkingKeys
from tillroll.host.admin import add_card, add_merchant, add_terminal
from tillroll.host.store import open_store
from tillroll.iso8583 import framing
from tillroll.iso8583.messages import Message, mac_matches, pack, sign, unpack

MID = "898100012340001"
PIN = "123456"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} not listening on port {port} after 30 s")


def wait_line(proc: subprocess.Popen[str], pattern: str, timeout_s: float = 60.0) -> None:
    """Read the process's output until a line matches; keep draining it afterwards."""
    found = threading.Event()
    rx = re.compile(pattern)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if rx.search(line):
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout_s) or proc.poll() is not None:
        raise SystemExit(f"host not ready within {timeout_s:.0f} s (status {proc.poll()})")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its live descendants (Linux /proc)."""
    return sum(proc_cpu_s(p) for p in tree_pids(pid))


def tree_pids(pid: int) -> list[int]:
    """A process and its live descendants, those started from any of its threads too."""
    try:
        children = [
            int(c)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()
        ]
    except (OSError, ValueError):
        return [pid]
    return [pid] + [p for c in children for p in tree_pids(c)]


def is_db_process(pid: int) -> bool:
    try:
        return b"db-process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def proc_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL server process on this machine (whoever they serve)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = proc_cpu_s(int(entry.name))
            except OSError:
                continue
    return found


def postgres_cpu_since(before: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in postgres_cpu().items())


def load_1min() -> float:
    return round(os.getloadavg()[0], 2)


def iso8583sim() -> str:
    exe = shutil.which("iso8583sim", path=str(Path(sys.executable).parent)) or shutil.which("iso8583sim")
    if exe is None:
        raise SystemExit("iso8583sim is not installed: pip install -e '.[dev]'")
    return exe


def _figure(text: str, label: str, unit: str) -> float | None:
    m = re.search(rf"{label}\W+([\d,.]+)\s*{unit}", text)
    return float(m.group(1).replace(",", "")) if m else None


def peer_request(stan: int) -> bytes:
    """iso8583sim's own sample authorization, in its default wire format and framing."""
    from iso8583sim.core.builder import ISO8583Builder
    from iso8583sim.core.samples import sample_message
    from iso8583sim.net.framing import Framing
    from iso8583sim.wire import WireFormat, encode_message

    message = sample_message(stan=f"{stan % 999999 + 1:06d}")
    return bytes(Framing().frame(encode_message(message, WireFormat.ascii_binary(), ISO8583Builder())))


async def drive_peer(
    port: int, concurrency: int, seconds: float, started: Callable[[], None]
) -> tuple[list[float], list[bytes], float]:
    """The mock under this bench's own loader: the same connections, the same prepared frames
    sent one at a time each, for the same time as the host."""
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)))
    # The mock keeps nothing: each connection sends its frames round and round (one at a time,
    # so a STAN repeats only long after its answer).
    per_conn = 200
    frames = [[peer_request(c * per_conn + i) for i in range(per_conn)] for c in range(concurrency)]
    latencies: list[float] = []
    answers: list[bytes] = []
    started()
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(
            sell(r, w, [], functools.partial(next, itertools.cycle(f)), deadline, latencies, answers)
            for (r, w), f in zip(conns, frames, strict=True)
        )
    )
    return latencies, answers, time.perf_counter() - start


def peer_refusals(answers: list[bytes]) -> int:
    from iso8583sim.wire import WireFormat, decode_message

    fmt = WireFormat.ascii_binary()
    return sum(1 for payload in answers if decode_message(payload, fmt).fields.get(39) != "00")


def run_peer_same_loader(concurrency: int, seconds: float) -> dict[str, Any]:
    """The approve-all mock (`iso8583sim serve`) under this bench's loader: its figures."""
    port = free_port()
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    mock = subprocess.Popen(
        [iso8583sim(), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port, mock, "iso8583sim serve")
        at: list[float] = []

        def started() -> None:
            at.extend((tree_cpu_s(mock.pid), time.process_time()))

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            latencies, answers, elapsed = runner.run(drive_peer(port, concurrency, seconds, started))
        mock_cpu, client_cpu = tree_cpu_s(mock.pid) - at[0], time.process_time() - at[1]
    finally:
        mock.terminate()
        mock.wait(timeout=10)
    latencies.sort()
    n = len(latencies)
    return {
        "peer_responses": n,
        "peer_errors": peer_refusals(answers),
        "peer_seconds": round(elapsed, 2),
        "peer_per_s": round(n / elapsed, 1),
        "peer_p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
        "peer_p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
        "peer_cpu_s": round(mock_cpu, 2),
        "peer_client_cpu_s": round(client_cpu, 2),
    }


def run_peer_load(concurrency: int, count: int) -> dict[str, Any]:
    """The approve-all mock (`iso8583sim serve`) under its own loader (`iso8583sim load`, which
    builds and encodes each request as it goes): its figures."""
    port = free_port()
    exe = iso8583sim()
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    mock = subprocess.Popen(
        [exe, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, mock, "iso8583sim serve")
        cpu0, children0 = tree_cpu_s(mock.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        load = subprocess.run(
            [exe, "load", "--port", str(port), "-n", str(count), "-c", str(concurrency),
             "--connections", str(concurrency)],
            env=env, capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        mock_cpu = tree_cpu_s(mock.pid) - cpu0
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        mock.terminate()
        mock.wait(timeout=10)
    out = load.stdout
    loader_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    responses = _figure(out, "Responses", "")
    return {
        "peer_load_requests": count,
        "peer_load_responses": int(responses) if responses is not None else None,
        "peer_load_errors": int((_figure(out, "Errors", "") or 0) + (_figure(out, "Timeouts", "") or 0)),
        "peer_load_seconds": _figure(out, "Duration", "s"),
        "peer_load_per_s": _figure(out, "Throughput", "msg/s"),
        "peer_load_p50_ms": _figure(out, "Latency p50", "ms"),
        "peer_load_p99_ms": _figure(out, "Latency p99", "ms"),
        "peer_load_cpu_s": round(mock_cpu, 2),
        "peer_load_loader_cpu_s": round(loader_cpu, 2),  # with its start-up (about 0.5 s)
    }


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frame: bytes) -> bytes:
    writer.write(frame)
    await writer.drain()
    payload = await framing.read_payload(reader)
    return framing.parse_payload(payload).message


def framed(body: bytes) -> bytes:
    return framing.Frame(framing.TERMINAL_TPDU, framing.TERMINAL_HEADER, body).encode()


# The loader signs its sales before the clock starts and checks the answers (response code, MAC)
# after it stops: it shares the two cores with the host, and its own signing and checking
# (~150 µs a sale) would otherwise be taken from the host's share. Enough frames for this many
# sales a second in all; a terminal that runs out signs the rest during the run (counted).
PRESIGNED_PER_S = 4000


@dataclass
class Terminal:
    """One signed-in bench terminal: its connection, keys and next STAN."""

    tid: str
    pan: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    keys: WorkingKeys
    batch: str
    stan: int = 0
    answers: list[bytes] = field(default_factory=list)
    signed_in_run: int = 0

    def next_stan(self) -> str:
        self.stan += 1
        return f"{self.stan:06d}"

    def sale(self, use_pin: bool) -> bytes:
        fields = {
            "2": self.pan, "3": "000000", "4": "000000000100", "11": self.next_stan(), "14": "3012",
            "22": "021" if use_pin else "022", "25": "00", "41": self.tid, "42": MID, "49": "156",
            "53": "2600000000000000", "60": f"22{self.batch}000",
        }  # fmt: skip
        if use_pin:
            fields["26"] = "12"
            fields["52"] = encrypt_pin_block(self.keys.pik, PIN, self.pan).hex().upper()
        return framed(sign(Message("0200", fields), self.keys.mak))


async def sign_in(index: int, tmk: bytes, port: int) -> Terminal:
    tid = f"B{index:07d}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = pack(Message("0800", {"11": "000001", "41": tid, "42": MID, "60": "00000001003", "63": "001"}))
    resp = unpack(await exchange(reader, writer, framed(body)))
    keys: WorkingKeys = unwrap_working_keys(tmk, bytes.fromhex(resp["62"]))
    return Terminal(tid, f"62220200000{index:08d}", reader, writer, keys, resp["60"][2:8], stan=1)


async def sell(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    frames: list[bytes],
    more: Callable[[], bytes],
    deadline: float,
    latencies: list[float],
    answers: list[bytes],
) -> int:
    """Send one frame at a time until `deadline`: the prepared ones, then `more()` (counted)."""
    sent = made = 0
    while time.perf_counter() < deadline:
        if sent < len(frames):
            frame = frames[sent]
        else:
            frame, made = more(), made + 1
        sent += 1
        t0 = time.perf_counter()
        writer.write(frame)
        await writer.drain()
        payload = await framing.read_payload(reader)
        latencies.append(time.perf_counter() - t0)
        answers.append(payload)
    writer.close()
    return made


def refusals(term: Terminal) -> list[str]:
    """The answers that are not an approval with a good MAC (their response codes)."""
    bad = []
    for payload in term.answers:
        raw = framing.parse_payload(payload).message
        answer = unpack(raw)
        if answer["39"] != "00" or not mac_matches(raw, term.keys.mak):
            bad.append(answer["39"])
    return bad


async def drive(
    tmks: list[bytes], port: int, seconds: float, use_pin: bool, started: Callable[[], None]
) -> tuple[list[float], list[Terminal], float]:
    """Sign every terminal in and sign its sales, then `started()` and sell for `seconds`."""
    terms = await asyncio.gather(*(sign_in(i, tmk, port) for i, tmk in enumerate(tmks)))
    per_terminal = int(seconds * PRESIGNED_PER_S / len(terms)) + 10
    frames = [[term.sale(use_pin) for _ in range(per_terminal)] for term in terms]
    latencies: list[float] = []
    started()
    start = time.perf_counter()
    deadline = start + seconds
    made = await asyncio.gather(
        *(
            sell(t.reader, t.writer, f, functools.partial(t.sale, use_pin), deadline, latencies, t.answers)
            for t, f in zip(terms, frames, strict=True)
        )
    )
    for term, n in zip(terms, made, strict=True):
        term.signed_in_run = n
    return latencies, terms, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--pin", action="store_true", help="send a PIN block with every sale")
    parser.add_argument("--workers", type=int, default=None, help="host serve --workers N")
    parser.add_argument("--db-process", action="store_true", help="host serve --db-process")
    parser.add_argument("--one-process", action="store_true", help="host serve --one-process")
    parser.add_argument("--peer", action="store_true", help="also measure iso8583sim serve (both loaders)")
    parser.add_argument("--host-log", type=Path, default=None, help="write the host's log (stderr) here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tillroll-bench-"))
    env = dict(os.environ, TILLROLL_MASTER_KEY_FILE=str(work / "master.key"))
    os.environ.update(env)
    db = args.db or f"sqlite:///{work / 'host.db'}"
    store = open_store(db)
    add_merchant(store, MID, "BENCH MERCHANT")
    tmks = []
    for i in range(args.concurrency):
        tmks.append(add_terminal(store, f"B{i:07d}", MID))
        add_card(store, f"62220200000{i:08d}", "3012", PIN, 10**11)
    store.engine.dispose()

    port = free_port()
    command = [sys.executable, "-m", "tillroll", "host", "serve", "--listen", f"127.0.0.1:{port}", "--db", db]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.db_process and args.one_process:
        parser.error("--db-process and --one-process go one at a time")
    if args.db_process:
        command += ["--db-process"]
    if args.one_process:
        command += ["--one-process"]
    log = args.host_log.open("w") if args.host_log else subprocess.DEVNULL
    host = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE if args.workers else subprocess.DEVNULL,
        stderr=log, text=True,
    )  # fmt: skip
    try:
        if args.workers:  # every worker listening, not only the first
            wait_line(host, rf"\([^,]+, {args.workers} workers?\)")
        else:
            wait_listening(port, host, "tillroll host serve")
        snapshot: dict[str, Any] = {}
        pids = tree_pids(host.pid)
        db_process = any(is_db_process(p) for p in pids)  # asked for, or the host's default

        def started() -> None:  # the measured run begins: every counter's starting point
            snapshot.update(
                load=load_1min(), host=tree_cpu_s(host.pid), client=time.process_time(),
                pg=postgres_cpu(), by_pid=[proc_cpu_s(p) for p in pids],
            )  # fmt: skip

        # The loader on uvloop too: it shares the two cores with the host, so its own overhead
        # is kept small (it is not what is measured).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            latencies, terms, elapsed = runner.run(drive(tmks, port, args.seconds, args.pin, started))
        host_cpu = tree_cpu_s(host.pid) - snapshot["host"]
        client_cpu = time.process_time() - snapshot["client"]
        by_pid = [round(proc_cpu_s(p) - c0, 2) for p, c0 in zip(pids, snapshot["by_pid"], strict=True)]
        pg_cpu = postgres_cpu_since(snapshot["pg"])
        load_before, load_after = snapshot["load"], load_1min()
    finally:
        host.terminate()
        host.wait(timeout=30)
        if args.host_log:
            log.close()  # type: ignore[union-attr]
    errors = [code for term in terms for code in refusals(term)]
    latencies.sort()
    n = len(latencies)
    result: dict[str, Any] = {
        "benchmark": "host_auth",
        "database": db.split(":")[0],
        "concurrency": args.concurrency,
        "pin": args.pin,
        "seconds": round(elapsed, 2),
        "authorizations": n,
        "errors": len(errors),
        "authorizations_per_s": round(n / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else None,
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "db_process": db_process,
        "host_cpu_s": round(host_cpu, 2),  # every host process, during the measured run
        "host_cpu_us_per_auth": round(host_cpu / n * 1e6) if n else None,
        # each host process (the started one first), a busiest one near seconds is the bound
        "host_process_cpu_s": by_pid,
        "client_cpu_s": round(client_cpu, 2),  # sales signed before the run, answers checked after
        "signed_in_run": sum(term.signed_in_run for term in terms),  # ran out of presigned ones
        # every PostgreSQL server process on the machine: other users of the server count too
        "postgres_cpu_s": round(pg_cpu, 2) if db.startswith("postgres") else None,
        "load_1min": [load_before, load_after],
    }
    if args.peer:
        result.update(run_peer_same_loader(args.concurrency, args.seconds))
        result.update(run_peer_load(args.concurrency, max(n, 1000)))
        for key, peer in (("host_to_peer", "peer_per_s"), ("host_to_peer_load", "peer_load_per_s")):
            rate = result[peer]
            result[key] = round(result["authorizations_per_s"] / rate, 3) if rate else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
