"""Slowloris against `cdcda serve` on 127.0.0.1: what N trickling connections hold, and whether
an honest client is still served.

    .venv/bin/python benchmarks/serve_slowloris.py [--connections 50] [--seconds 20] [--interval 0.5]

Each attacking connection sends a request's header one byte every ``--interval`` seconds and never
finishes it. Measured in the server's process: peak and mean thread count over the attack, how
many attacking connections the server closed and after how long, and the latency of honest
requests sent during the attack. Bounded: at most ``--connections`` sockets for ``--seconds``.
Writes ``benchmarks/results/serve_slowloris.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADER = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\nX-Padding: " + b"a" * 4096


class Echo:
    name = "echo"

    def generate_detailed(self, prompts, *, max_new_tokens, temperature, seed):
        from cdcda_fl.cloud.backends import Generation

        return [Generation("ok", "stop", 1, 1) for _ in prompts]


def _attacker(addr: tuple[str, int], stop_at: float, interval: float, closed: list[float]) -> None:
    """Trickle the header until the server closes the connection or the attack ends."""
    start = time.monotonic()
    try:
        with socket.create_connection(addr, timeout=5) as sock:
            for byte in HEADER:
                if time.monotonic() >= stop_at:
                    return
                sock.sendall(bytes([byte]))
                time.sleep(interval)
                sock.settimeout(0.001)
                try:
                    if sock.recv(4096) == b"":
                        break
                except (TimeoutError, BlockingIOError):
                    continue
                finally:
                    sock.settimeout(5)
                break  # the server answered (e.g. 408/503) and will close
    except OSError:
        pass
    if time.monotonic() < stop_at:
        closed.append(time.monotonic() - start)


def _honest(url: str, stop_at: float, latencies: list[float], failures: list[str]) -> None:
    import httpx

    while time.monotonic() < stop_at:
        t = time.monotonic()
        try:
            r = httpx.post(f"{url}/completions", headers={"Authorization": "Bearer k"},
                           json={"prompt": "hello", "max_tokens": 2}, timeout=10)
            (latencies if r.status_code == 200 else failures).append(time.monotonic() - t if r.status_code == 200 else str(r.status_code))
        except httpx.HTTPError as exc:
            failures.append(type(exc).__name__)
        time.sleep(1.0)


def run(connections: int, seconds: float, interval: float, **server_kw) -> dict:
    """One bounded attack against a fresh server in this process; returns the measurements."""
    from cdcda_fl.cloud.serve import make_server

    server = make_server(None, backend=Echo(), model_name="echo", api_key="k", **server_kw).start()
    try:
        addr = tuple(server.server_address[:2])
        base_threads = threading.active_count()
        stop_at = time.monotonic() + seconds
        closed: list[float] = []
        latencies: list[float] = []
        failures: list[str] = []
        workers = [threading.Thread(target=_attacker, args=(addr, stop_at, interval, closed), daemon=True)
                   for _ in range(connections)]
        workers.append(threading.Thread(target=_honest, args=(server.url, stop_at, latencies, failures), daemon=True))
        for w in workers:
            w.start()
        samples = []
        while time.monotonic() < stop_at:
            # the client threads are ours; the rest is what the server holds
            samples.append(threading.active_count() - base_threads - sum(w.is_alive() for w in workers))
            time.sleep(0.25)
        for w in workers:
            w.join(timeout=15)
    finally:
        server.close()
    return {
        "connections": connections, "seconds": seconds, "interval": interval,
        "server_threads_peak": max(samples), "server_threads_mean": round(statistics.mean(samples), 1),
        "closed_by_server": len(closed),
        "closed_after_s_median": round(statistics.median(closed), 2) if closed else None,
        "honest_ok": len(latencies), "honest_failed": failures,
        "honest_latency_s_max": round(max(latencies), 3) if latencies else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--read-deadline", type=float, default=None, help="server's read deadline (default: its own)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_slowloris.json"))
    a = ap.parse_args()
    if a.connections > 200 or a.seconds > 60:
        raise SystemExit("serve_slowloris: bounded on purpose (<= 200 connections, <= 60 s)")
    kw = {} if a.read_deadline is None else {"read_deadline": a.read_deadline}
    result = run(a.connections, a.seconds, a.interval, **kw)
    print(json.dumps(result, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
