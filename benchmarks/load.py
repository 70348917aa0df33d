"""Load benchmark of the HTTP API on loopback.

Starts ``hmer serve`` in a child process (a tiny untrained model by default, the shipped models
with ``--default-model``, or ``--model PATH``), then runs N concurrent clients (asyncio + httpx)
for a bounded time, posting images and pen strokes in turn. Reports throughput, latency
percentiles, errors, ``/healthz`` latency while loaded, and the server's resident memory at
start, peak and end.

With ``--hostile``, a share of the clients (``--hostile-share``) instead cycle through the
hostile-input corpus of ``scripts/bad_inputs.py`` (bombs, noise images, 100k-trace InkML,
spread-out strokes, huge JSON...): the report then shows what valid requests get meanwhile.

    python benchmarks/load.py --clients 8 --seconds 20
    python benchmarks/load.py --hostile --clients 16 --seconds 20
    python benchmarks/load.py --default-model --clients 4 --seconds 30 --json

Only 127.0.0.1 is ever contacted; the run stops by itself after ``--seconds`` or
``--max-requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"


# -- the server ----------------------------------------------------------------------------------
def serve_tiny(port: int, workers: int, threads: int) -> None:
    """Child process: serve a tiny untrained image model (what the tests use)."""
    import torch

    from hmer.data.vocab import Vocab
    from hmer.interfaces.api import Limits, create_app
    from hmer.interfaces.server import serve_app
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
    serve_app(app, HOST, port)


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


def hostile_corpus(folder: Path) -> list[tuple[str, bytes, dict]]:
    """(name, body, request keyword arguments) for every HTTP case of the hostile corpus."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "bad_inputs.py"
    spec = importlib.util.spec_from_file_location("bad_inputs", path)
    bad = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = bad
    spec.loader.exec_module(bad)
    out = []
    for case in bad.build(folder):
        if case.send == "none":
            continue
        data = (folder / case.path).read_bytes()
        if case.send == "multipart":
            name = case.filename or Path(case.path).name
            kwargs = {"files": {"file": (name, data, case.content_type)}, "headers": case.headers}
        else:
            kwargs = {
                "content": data,
                "headers": {"content-type": case.content_type, **case.headers},
            }
        out.append((case.name, data, kwargs))
    return out


# -- the load ------------------------------------------------------------------------------------
Row = tuple[str, float, int, str]  # kind, seconds, HTTP status, error code ("" for 200)


def error_code(r: httpx.Response) -> str:
    if r.status_code == 200:
        return ""
    try:
        return str(r.json().get("code", ""))
    except ValueError:
        return "not json"


async def hostile_loop(
    client: httpx.AsyncClient,
    url: str,
    k: int,
    deadline: float,
    budget: list[int],
    cases: list[tuple[str, bytes, dict]],
    out: list[Row],
) -> None:
    order = list(range(len(cases)))
    random.Random(k).shuffle(order)
    i = 0
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        _, _, kwargs = cases[order[i % len(order)]]
        i += 1
        t0 = time.perf_counter()
        try:
            r = await client.post(url, **kwargs)
            status, code = r.status_code, error_code(r)
        except httpx.HTTPError:
            status, code = 0, "no answer"
        out.append(("hostile", time.perf_counter() - t0, status, code))


async def client_loop(
    client: httpx.AsyncClient,
    url: str,
    k: int,
    deadline: float,
    budget: list[int],
    png: bytes,
    strokes: list,
    out: list[Row],
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
            status, code = r.status_code, error_code(r)
        except httpx.HTTPError:
            status, code = 0, "no answer"
        out.append((kind, time.perf_counter() - t0, status, code))


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
        hostile_clients = round(args.clients * args.hostile_share) if args.hostile else 0
        cases = []
        if hostile_clients:
            tmp = tempfile.TemporaryDirectory()
            cases = hostile_corpus(Path(tmp.name))
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

            health_ms: list[float] = []

            async def probe() -> None:  # is the event loop still free while loaded?
                async with httpx.AsyncClient(timeout=args.timeout) as own:
                    while True:
                        t = time.perf_counter()
                        try:
                            await own.get(base + "/healthz")
                            health_ms.append((time.perf_counter() - t) * 1000)
                        except httpx.HTTPError:
                            health_ms.append(float("inf"))
                        await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample())
            prober = asyncio.create_task(probe())
            results: list[Row] = []
            budget = [args.max_requests]
            t0 = time.monotonic()
            deadline = t0 + args.seconds
            loops = [
                hostile_loop(client, url, k, deadline, budget, cases, results)
                for k in range(hostile_clients)
            ]
            loops += [
                client_loop(client, url, k, deadline, budget, png, strokes, results)
                for k in range(hostile_clients, args.clients)
            ]
            await asyncio.gather(*loops)
            elapsed = time.monotonic() - t0
            sampler.cancel()
            prober.cancel()
            rss_end = rss_mb(proc.pid)
            alive = (await client.get(base + "/healthz")).status_code == 200

            # SIGTERM while every client has a request in flight: how long until it exits?
            heavy = cases or [("image", png, {"files": {"file": ("x.png", png, "image/png")}})]
            later, tail = time.monotonic() + 60, []
            burst = [
                asyncio.create_task(hostile_loop(client, url, k, later, [10**6], heavy, tail))
                for k in range(args.clients)
            ]
            await asyncio.sleep(1.0)
            stop0 = time.monotonic()
            proc.terminate()
            while proc.poll() is None and time.monotonic() - stop0 < 60:
                await asyncio.sleep(0.05)
            stop_s = time.monotonic() - stop0
            for task in burst:
                task.cancel()
            await asyncio.gather(*burst, return_exceptions=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def summary(rows: list[Row]) -> dict:
        ok = [lat * 1000 for _, lat, st, _ in rows if st == 200]
        return {
            "requests": len(rows),
            "errors": sum(st != 200 for _, _, st, _ in rows),
            "throughput_rps": round(len(rows) / elapsed, 2),
            "p50_ms": round(percentile(ok, 50), 1),
            "p95_ms": round(percentile(ok, 95), 1),
            "p99_ms": round(percentile(ok, 99), 1),
            "max_ms": round(max(ok), 1) if ok else None,
        }

    valid = [r for r in results if r[0] != "hostile"]

    def count(rows: list[Row]) -> dict[str, int]:
        statuses: dict[str, int] = {}
        for _, _, st, code in rows:
            key = f"{st} {code}" if st >= 500 else str(st)  # which 503: busy or timeout
            statuses[key] = statuses.get(key, 0) + 1
        return dict(sorted(statuses.items()))

    return {
        "server": "default model" if args.default_model else (args.model or "tiny untrained"),
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "hostile_clients": hostile_clients,
        "all": summary(results),
        "valid": summary(valid),
        "image": summary([r for r in results if r[0] == "image"]),
        "strokes": summary([r for r in results if r[0] == "strokes"]),
        "statuses": count(results),
        "valid_statuses": count(valid),
        "hostile_statuses": count([r for r in results if r[0] == "hostile"]),
        "server_errors_5xx": sum(st >= 500 for _, _, st, _ in results),
        "internal_errors_500": sum(st == 500 for _, _, st, _ in results),
        "healthz_ms": {
            "p50": round(percentile(health_ms, 50), 1),
            "p99": round(percentile(health_ms, 99), 1),
            "max": round(max(health_ms), 1) if health_ms else None,
        },
        "rss_mb": {
            k: round(v, 1) if v else None
            for k, v in (("start", rss_start), ("peak", peak[0]), ("end", rss_end))
        },
        "alive_after": alive,
        "sigterm_exit_s": round(stop_s, 2),
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
    p.add_argument(
        "--hostile", action="store_true", help="mix in hostile inputs (scripts/bad_inputs.py)"
    )
    p.add_argument(
        "--hostile-share", type=float, default=0.5, help="share of clients sending hostile inputs"
    )
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
    for kind in ("all", "valid", "image", "strokes"):
        s = report[kind]
        print(
            f"  {kind:8s} {s['requests']:6d} req  {s['throughput_rps']:7.2f} req/s  "
            f"p50 {s['p50_ms']:8.1f} ms  p95 {s['p95_ms']:8.1f} ms  p99 {s['p99_ms']:8.1f} ms  "
            f"non-200 {s['errors']}"
        )
    print(f"  valid statuses: {report['valid_statuses']}")
    if report["hostile_clients"]:
        print(
            f"  hostile statuses ({report['hostile_clients']} clients): "
            f"{report['hostile_statuses']}"
        )
    print(
        f"  5xx: {report['server_errors_5xx']} (500: {report['internal_errors_500']})   "
        f"/healthz while loaded: {report['healthz_ms']}"
    )
    m = report["rss_mb"]
    print(f"  server RSS: start {m['start']} MB, peak {m['peak']} MB, end {m['end']} MB")
    print(
        f"  alive after: {report['alive_after']}   "
        f"SIGTERM under load to exit: {report['sigterm_exit_s']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
