"""The hostile-input corpus (``scripts/bad_inputs.py``) through ``hmer recognize`` and the API.

Every case must get a clear error or a result: no server error, no hang, no internal detail in
what a user reads; the server must stay up, keep its memory and stop promptly on SIGTERM. Time
bounds here are generous on purpose (CI machines are shared); the measured numbers come from
``python scripts/bad_inputs.py check`` and ``benchmarks/load.py --hostile``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from serve_helpers import tiny_image_release  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "scripts" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    bad = load_script()
    folder = tmp_path_factory.mktemp("corpus")
    cases = bad.build(folder)
    model = tiny_image_release(tmp_path_factory.mktemp("model") / "tiny.safetensors")
    return bad, folder, cases, model


def test_the_corpus_has_the_cases_the_issue_names(corpus):
    _, folder, cases, _ = corpus
    names = {c.name for c in cases}
    assert len(cases) >= 100
    for name in (
        "spread_issue.json",
        "salt_pepper_1500.png",
        "traces_100k.inkml",
        "one_dark_pixel_3x3.png",
        "line_1x20000.png",
        "fuzzed_dds_0.png",
        "fuzzed_spider_0.png",
        "gray16_ink.png",
        "utf16le_bom.inkml",
        "coords_1e39.inkml",
        "nan_coords.inkml",
        "entity_bomb.inkml",
        "declares_30000x30000.png",
        "cross_origin",
        "wrong_host",
    ):
        assert name in names, name
    assert json.loads((folder / "cases.json").read_text())[0]["name"] == cases[0].name


def test_the_corpus_through_the_command_line(corpus):
    bad, folder, cases, model = corpus
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hmer.cli", "recognize", str(folder / "files"), "--model", model]
    t0 = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--beam", "1", "--format", "json", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang fails the test instead of stalling the suite
        env=env,
    )
    elapsed = time.monotonic() - t0
    results = {Path(json.loads(line)["source"]).name for line in proc.stdout.splitlines()}
    prefix = f"hmer: error: {folder / 'files'}/"
    errors, other = {}, []
    for line in proc.stderr.splitlines():
        if line.startswith(prefix):
            name, _, message = line.removeprefix(prefix).partition(": ")
            errors[name] = message
        elif not re.fullmatch(r"hmer: error: \d+ of \d+ files .*", line):  # the closing count
            other.append(line)
    assert not other, other  # no warnings, tracebacks or progress noise
    problems = []
    for case in cases:
        name = Path(case.path).name
        if not case.path.startswith("files/") or case.name != name:
            continue  # the same file sent another way over HTTP
        if (name in results) == (name in errors):
            problems.append(f"{name}: answered {int(name in results) + int(name in errors)} times")
        elif case.expect == "result" and name not in results:
            problems.append(f"{name}: expected a result, got: {errors[name]}")
        elif case.expect == "error" and name not in errors:
            problems.append(f"{name}: expected an error, got a result")
        message = errors.get(name, "")
        if len(message) > 300 or any(word in message for word in bad.INTERNALS):
            problems.append(f"{name}: unclear message {message!r}")
    assert not problems, problems
    assert proc.returncode == 1  # some inputs failed, as they should
    assert elapsed < 400


def test_the_corpus_through_the_http_api(corpus):
    bad, folder, cases, model = corpus
    port = bad.free_port()
    url = f"http://{bad.HOST}:{port}"
    proc = bad.start_server(model, port, workers=2, threads=1, timeout=3.0)
    try:
        bad.wait_ready(url, proc)
        rss_start = bad.rss_mb(proc.pid)
        problems, slowest = [], 0.0
        with httpx.Client(timeout=60) as client:
            for case in cases:
                if case.send == "none":
                    continue
                status, body, seconds = bad.send(client, url, folder, case)
                problems += [f"{case.name}: {p}" for p in bad.problems(case, status, body)]
                slowest = max(slowest, seconds)
            health = client.get(url + "/healthz")
            again = bad.send(client, url, folder, bad.Case("ok", "files/ok_expression.png", "r"))
        assert not problems, problems
        assert slowest < 60
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert again[0] == 200  # still serving valid requests
        assert bad.rss_mb(proc.pid) < rss_start + 1024  # memory within a bound
        log = bad.server_log(proc)
        assert "Traceback" not in log and "Warning" not in log, log[-3000:]

        # SIGTERM while requests are running: the server stops within seconds.
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    try:
                        bad.send(c, url, folder, bad.Case("n", "files/salt_pepper_1500.png", "r"))
                    except Exception:  # noqa: BLE001 - the server is going away
                        return

        workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert time.monotonic() - t0 < 15
        stop.set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
