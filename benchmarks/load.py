"""Load benchmark of the HTTP API on loopback.

Starts ``hmer serve`` in a child process (a tiny untrained model by default, the shipped models
with ``--default-model``, or ``--model PATH``), then runs N concurrent clients (asyncio + httpx)
for a bounded time, posting images and pen strokes in turn. Reports throughput, latency
percentiles, errors, and the server's resident memory at start, peak and end.

    python benchmarks/load.py --clients 8 --seconds 20
    python benchmarks/load.py --default-model --clients 4 --seconds 30 --json

Only 127.0.0.1 is ever contacted; the run stops by itself after ``--seconds`` or
``--max-requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"


# -- the server ----------------------------------------------------------------------------------
def serve_tiny(port: int, workers: int, threads: int) -> None:
    """Child process: serve a tiny untrained image model (what the tests use)."""
    import torch
    import uvicorn

    from hmer.data.vocab import Vocab
    from hmer.interfaces.api import Limits, create_app
    from hmer.models import create_model
    from hmer.recognize import Recognizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vocab = Vocab(["x", "+", "1", "2", "=", "\\frac", "{", "}"])
    model = create_model(
        "transformer",
        len(vocab),
        encoder_cfg={"growth": 4, "depth": 2},
        d_model=32,
        nhead=2,
        num_layers=1,
        ffn=64,
    )
    app = create_app(
        {"tiny": Recognizer(model, vocab, "tiny", beam=2)}, Limits(max_concurrency=workers)
    )
    uvicorn.run(app, host=HOST, port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    if args.default_model or args.model:
        cmd = [
            sys.executable,
            "-m",
            "hmer.cli",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
        ]
        if args.model:
            cmd += ["--model", args.model]
    else:
        cmd = [
            sys.executable,
            __file__,
            "--serve-tiny",
            str(port),
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
        ]
    return subprocess.Popen(cmd)


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process may have exited
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            try:
                if (await client.get(url + "/healthz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the server did not become ready in time")


# -- the inputs ------------------------------------------------------------------------------------
def make_inputs() -> tuple[bytes, list]:
    """A PNG of a short handwritten-looking expression and strokes of one."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (220, 80), 255)
    d = ImageDraw.Draw(img)
    for line in (
        [(15, 15), (45, 60)],
        [(45, 15), (15, 60)],
        [(65, 38), (100, 38)],
        [(82, 20), (82, 56)],
        [(120, 25), (130, 15), (130, 62)],
        [(150, 32), (185, 32)],
        [(150, 45), (185, 45)],
    ):
        d.line(line, fill=20, width=4)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    strokes = [
        [[0, 0, 0], [12, 14, 30], [24, 28, 60]],
        [[24, 0, 200], [12, 14, 230], [0, 28, 260]],
        [[34, 14, 400], [58, 14, 450]],
        [[46, 2, 600], [46, 26, 650]],
        [[70, 4, 800], [76, 0, 820], [76, 28, 880]],
    ]
    return buf.getvalue(), strokes


# -- the load ------------------------------------------------------------------------------------
async def client_loop(
    client: httpx.AsyncClient,
    url: str,
    k: int,
    deadline: float,
    budget: list[int],
    png: bytes,
    strokes: list,
    out: list[tuple[str, float, int]],
) -> None:
    i = k
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        kind = "image" if i % 2 == 0 else "strokes"
        i += 1
        t0 = time.perf_counter()
        try:
            if kind == "image":
                r = await client.post(url, files={"file": ("x.png", png, "image/png")})
            else:
                r = await client.post(url, json={"strokes": strokes})
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        out.append((kind, time.perf_counter() - t0, status))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def run(args: argparse.Namespace) -> dict:
    port = free_port()
    base = f"http://{HOST}:{port}"
    proc = start_server(args, port)
    try:
        await wait_ready(base, proc, args.startup_timeout)
        png, strokes = make_inputs()
        url = base + "/v1/recognize" + (f"?beam={args.beam}" if args.beam else "")
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        async with httpx.AsyncClient(limits=limits, timeout=args.timeout) as client:
            for _ in range(2):  # warm-up (first calls build kernels and caches)
                await client.post(url, json={"strokes": strokes})
                await client.post(url, files={"file": ("x.png", png, "image/png")})
            rss_start = rss_mb(proc.pid)
            peak = [rss_start or 0.0]

            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], rss_mb(proc.pid) or 0.0)
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            results: list[tuple[str, float, int]] = []
            budget = [args.max_requests]
            t0 = time.monotonic()
            deadline = t0 + args.seconds
            await asyncio.gather(
                *(
                    client_loop(client, url, k, deadline, budget, png, strokes, results)
                    for k in range(args.clients)
                )
            )
            elapsed = time.monotonic() - t0
            sampler.cancel()
            rss_end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def summary(rows: list[tuple[str, float, int]]) -> dict:
        ok = [lat * 1000 for _, lat, st in rows if st == 200]
        return {
            "requests": len(rows),
            "errors": sum(st != 200 for _, _, st in rows),
            "throughput_rps": round(len(rows) / elapsed, 2),
            "p50_ms": round(percentile(ok, 50), 1),
            "p95_ms": round(percentile(ok, 95), 1),
            "max_ms": round(max(ok), 1) if ok else None,
        }

    statuses: dict[str, int] = {}
    for _, _, st in results:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    return {
        "server": "default model" if args.default_model else (args.model or "tiny untrained"),
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "all": summary(results),
        "image": summary([r for r in results if r[0] == "image"]),
        "strokes": summary([r for r in results if r[0] == "strokes"]),
        "statuses": statuses,
        "rss_mb": {
            k: round(v, 1) if v else None
            for k, v in (("start", rss_start), ("peak", peak[0]), ("end", rss_end))
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-requests", type=int, default=100_000, help="stop after this many")
    p.add_argument("--default-model", action="store_true", help="serve the shipped models")
    p.add_argument("--model", help="serve this model file")
    p.add_argument("--beam", type=int, default=None, help="beam width for every request")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="server: inputs recognized at once",
    )
    p.add_argument("--threads", type=int, default=1, help="server: torch threads per worker")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--serve-tiny", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_tiny:
        serve_tiny(args.serve_tiny, args.workers, args.threads)
        return 0
    if args.clients < 1 or args.seconds <= 0 or args.seconds > 3600:
        p.error("need --clients >= 1 and 0 < --seconds <= 3600")
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"server: {report['server']}  clients: {report['clients']}  "
        f"time: {report['seconds']} s  workers: {report['workers']} x "
        f"{report['threads_per_worker']} thread(s)"
    )
    for kind in ("all", "image", "strokes"):
        s = report[kind]
        print(
            f"  {kind:8s} {s['requests']:6d} req  {s['throughput_rps']:7.2f} req/s  "
            f"p50 {s['p50_ms']:8.1f} ms  p95 {s['p95_ms']:8.1f} ms  errors {s['errors']}"
        )
    print(f"  statuses: {report['statuses']}")
    m = report["rss_mb"]
    print(f"  server RSS: start {m['start']} MB, peak {m['peak']} MB, end {m['end']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
