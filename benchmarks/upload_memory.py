"""Peak server memory per concurrent upload of a large PNG (issue #24 target: <= 150 MB each).

    python benchmarks/upload_memory.py [--home DIR] [--side 6000] [--concurrency 1 4]

Serves the API (tiny model, a small synthetic collection; HOME built on first use) in a child
process, uploads a compressible `side x side` RGB PNG (~100 KB for 6000 px, under the 40 MP cap) to
/search/upload from N clients at once, and reads the server's peak resident memory (VmHWM, reset
before each round through /proc/<pid>/clear_refs) against its resident memory before the round.
Then, each in a fresh process, one decode of the same PNG by the image gate and by the previous
upload decoder (full-size load, EXIF transpose, convert, rebuild), for the ratio of what they hold.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import machine_line  # first: the offline environment (the server inherits it)

MB = 1024 * 1024


def _status(pid: int | str, key: str) -> int:
    """A VmRSS / VmHWM line of /proc/<pid>/status, in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak(pid: int | str) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current VmRSS


def large_png(side: int) -> bytes:
    """A compressible side x side RGB PNG (a smooth gradient with a darker 'lesion' disc)."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    ImageDraw.Draw(image).ellipse((side // 3, side // 3, 2 * side // 3, 2 * side // 3), fill=(90, 60, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def build_home(home: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from load import build_home as build  # the load benchmark's HOME: tiny model + collection

    build(home, images=40, patients=8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_rounds(home: Path, png: bytes, rounds: list[int]) -> list[dict[str, float]]:
    import httpx

    port = _free_port()
    # The uploads stand for different clients: one client alone would get 429 beyond 2 in flight.
    env = {**os.environ, "DERMGROUND_HOME": str(home), "DERMGROUND_API_MODEL_WORK_PER_CLIENT": "64"}
    server = subprocess.Popen([sys.executable, "-m", "dermground", "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--collection", "lesions"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                log = server.stderr.read().decode()[-2000:] if server.stderr else ""
                raise RuntimeError(f"the server did not start: {log}")
            time.sleep(0.3)
        small = large_png(200)
        for _ in range(2):  # warm: model loaded, imports and the first allocations done
            httpx.post(f"{base}/search/upload", files={"file": ("q.png", small)}, timeout=120).raise_for_status()
        results = []
        for n in rounds:
            time.sleep(1.0)
            before = _status(server.pid, "VmRSS")
            _reset_peak(server.pid)
            statuses: list[int] = []
            seconds: list[float] = []

            def upload() -> None:
                started = time.perf_counter()
                response = httpx.post(f"{base}/search/upload", files={"file": ("big.png", png)},
                                      data={"request": json.dumps({"k": 3})}, timeout=300)
                seconds.append(time.perf_counter() - started)
                statuses.append(response.status_code)

            threads = [threading.Thread(target=upload) for _ in range(n)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            peak = _status(server.pid, "VmHWM")
            time.sleep(1.0)
            after = _status(server.pid, "VmRSS")
            results.append({"concurrency": n, "statuses": sorted(set(statuses)), "rss_before_mb": before / MB,
                            "peak_growth_mb": (peak - before) / MB, "per_upload_mb": (peak - before) / MB / n,
                            "rss_after_growth_mb": (after - before) / MB, "max_seconds": max(seconds)})
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


_DECODE_CHILD = r"""
import io, sys, time
from PIL import Image, ImageOps
data = open(sys.argv[2], "rb").read()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
def previous(data):  # the upload decoder before the image gate
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        rgb = ImageOps.exif_transpose(opened).convert("RGB")
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())
def gate(data):
    from dermground.platform.images import decode_checked
    return decode_checked(data, max_pixels=40_000_000)
decode = gate if sys.argv[1] == "gate" else previous
decode(b"" if False else open(sys.argv[3], "rb").read())  # warm on a small image: imports, first allocations
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
started = time.perf_counter()
image = decode(data)
print(image.size[0], image.size[1], (status("VmHWM") - before) / 2**20, time.perf_counter() - started)
"""


def decode_growth(kind: str, png_path: Path, small_path: Path) -> tuple[tuple[int, int], float, float]:
    out = subprocess.run([sys.executable, "-c", _DECODE_CHILD, kind, str(png_path), str(small_path)],
                         check=True, capture_output=True, text=True).stdout.split()
    return (int(out[0]), int(out[1])), float(out[2]), float(out[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "dermground-bench-load")
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    print(machine_line())
    build_home(args.home)
    png = large_png(args.side)
    print(f"PNG {args.side}x{args.side} RGB: {len(png) / 1024:.0f} KB; raw RGB pixels "
          f"{args.side * args.side * 3 / MB:.0f} MB (Pillow holds {args.side * args.side * 4 / MB:.0f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        png_path, small_path = Path(tmp) / "big.png", Path(tmp) / "small.png"
        png_path.write_bytes(png)
        small_path.write_bytes(large_png(200))
        decodes = {kind: decode_growth(kind, png_path, small_path) for kind in ("previous", "gate")}
    for kind, (size, growth, seconds) in decodes.items():
        print(f"decode only, {kind:8s}: result {size[0]}x{size[1]}, peak growth {growth:6.0f} MB, {seconds:.2f} s")
    print(f"decode only: the gate holds {decodes['previous'][1] / max(decodes['gate'][1], 1e-9):.1f}x less at its peak")
    for row in serve_rounds(args.home, png, args.concurrency):
        print(f"server, {row['concurrency']} concurrent upload(s): statuses {row['statuses']}, "
              f"peak growth {row['peak_growth_mb']:.0f} MB = {row['per_upload_mb']:.0f} MB per upload "
              f"(target <= 150), RSS afterwards +{row['rss_after_growth_mb']:.0f} MB, "
              f"slowest {row['max_seconds']:.1f} s")


if __name__ == "__main__":
    main()
