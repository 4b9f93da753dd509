"""Load test for `mnist-cnn serve`: a bounded number of concurrent requests against 127.0.0.1.

    python benchmarks/serve_load.py [--run RUN_DIR] [--requests 2000] [--concurrency 16]
                                    [--time-limit 120] [--payload png|json] [--json-out FILE]
                                    [--scenario normal|idle|slow|heavy|all]

Starts the server in a subprocess on a free loopback port (training a tiny run first when no
--run is given), sends the requests from a thread pool of keep-alive httpx clients, stops when
all are sent or the time limit passes, and reports throughput, p50/p90/p99 latency and errors as
a table and as JSON. Only loopback addresses are ever contacted.

Scenarios run hostile clients beside that normal traffic, for as long as it lasts (hostile.py):
idle (300 connections that never send, reopened when the server closes them), slow (20 clients
sending a request a byte a second), heavy (2 clients uploading 10 images of 2000x2000 back to back,
alternating with the issue-23 upload of 80 images of 5000x5000). The server's RSS is read before,
at the peak during, and 3 s after each scenario.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from hostile import SCENARIOS, Hostile

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tiny_run(directory: Path) -> Path:
    from mnist_cnn.training import TrainConfig, train

    out = directory / "tiny-run"
    train(TrainConfig(model="keras-basic", epochs=1, limit_train=3000, limit_test=1000, out=str(out), verbose=0),
          log=lambda *_: None)
    return out


def start_server(run_dir: Path, port: int, threads: int | None) -> subprocess.Popen:
    code = ("import sys, torch\n"
            "from mnist_cnn.serve import serve\n"
            f"if {threads!r}: torch.set_num_threads({threads!r})\n"
            f"serve({str(run_dir)!r}, {HOST!r}, {port}, log_level='warning')\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} not ready within {timeout_s:g} s")


def drawing_png() -> bytes:
    """A 280x280 white-on-black '7' as the drawing page sends it."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(im).line([(70, 60), (210, 60), (120, 230)], fill=255, width=20)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_request(payload: str):
    if payload == "png":
        body = drawing_png()
        return lambda c: c.post("/v1/predict", files={"file": ("drawing.png", body, "image/png")})
    arrays = {"images": [np.zeros((28, 28), int).tolist()], "value_range": "byte"}
    arrays["images"][0][10][10:18] = [255] * 8
    return lambda c: c.post("/v1/predict", json=arrays)


def run_load(url: str, requests: int, concurrency: int, time_limit_s: float, payload: str) -> dict:
    send = make_request(payload)
    lock, issued = threading.Lock(), [0]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + time_limit_s

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= requests:
                        return
                    issued[0] += 1
                start = time.perf_counter()
                try:
                    status = send(client).status_code
                    problem = None if status == 200 else f"HTTP {status}"
                except httpx.HTTPError as e:
                    problem = type(e).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    if problem:
                        errors[problem] = errors.get(problem, 0) + 1
                    else:
                        latencies.append(elapsed)

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - began
    lat_ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    done = len(latencies) + sum(errors.values())
    return {"payload": payload, "requests_planned": requests, "requests_sent": done, "ok": len(latencies),
            "errors": sum(errors.values()), "error_kinds": errors, "concurrency": concurrency,
            "wall_s": round(wall, 3), "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 2), "p90_ms": round(float(np.percentile(lat_ms, 90)), 2),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 2), "max_ms": round(float(lat_ms.max()), 2),
            "stopped_by_time_limit": done < requests}


def table(result: dict) -> str:
    rows = [("payload", result["payload"]), ("requests (ok / sent)", f"{result['ok']} / {result['requests_sent']}"),
            ("errors", f"{result['errors']} {result['error_kinds'] or ''}".strip()),
            ("concurrency", result["concurrency"]), ("wall time", f"{result['wall_s']:.2f} s"),
            ("throughput", f"{result['throughput_rps']:.1f} req/s"), ("latency p50", f"{result['p50_ms']:.1f} ms"),
            ("latency p90", f"{result['p90_ms']:.1f} ms"), ("latency p99", f"{result['p99_ms']:.1f} ms"),
            ("latency max", f"{result['max_ms']:.1f} ms")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def run_scenario(name: str, url: str, pid: int, args: argparse.Namespace) -> dict:
    """Normal traffic beside the scenario's hostile clients, with the server's memory before, during and after."""
    before = rss_mb(pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with Hostile(name, HOST, int(url.rsplit(":", 1)[1])) as hostile:
        result = run_load(url, args.requests, args.concurrency, args.time_limit, args.payload)
    stop.set()
    sampler.join()
    time.sleep(3)  # the decode pool goes idle and hands memory back
    return {"scenario": name, **result, "hostile": hostile.report(),
            "rss_mb": {"before": before, "peak": peak[0], "after": rss_mb(pid)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory to serve (default: train a tiny one)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=120.0, help="stop sending after this many seconds")
    parser.add_argument("--payload", choices=("png", "json"), default="png",
                        help="png: a 280x280 drawing upload (the page's request); json: one 28x28 array")
    parser.add_argument("--server-threads", type=int, help="torch threads in the server (default: torch's)")
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="normal",
                        help="hostile clients run beside the normal traffic (all: each in turn, normal first)")
    parser.add_argument("--json-out", type=Path, help="also write the result JSON here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.time_limit <= 0:
        parser.error("--requests, --concurrency and --time-limit must be positive")

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or tiny_run(Path(tmp))
        port = free_port()
        url = f"http://{HOST}:{port}"
        proc = start_server(run_dir, port, args.server_threads)
        try:
            wait_ready(url, proc)
            model = httpx.get(url + "/healthz").json()["model"]
            make_request(args.payload)(httpx.Client(base_url=url))  # warm-up, not counted
            names = SCENARIOS if args.scenario == "all" else (args.scenario,)
            results = [run_scenario(name, url, proc.pid, args) for name in names]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    about = {"model": model, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                         "python": platform.python_version()}}
    for r in results:
        print(f"\n{r['scenario']}: {json.dumps(r['hostile'])}, server RSS MB {r['rss_mb']}\n{table(r)}")
    result = {**about, **results[0]} if len(results) == 1 else {**about, "scenarios": results}
    print(json.dumps(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
