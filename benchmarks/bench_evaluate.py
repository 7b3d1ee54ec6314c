"""Benchmark ``geopose evaluate``: wall time and peak memory of the whole process tree.

Generates (once) 20 images of 2048² px, 5 per city, in the competition file formats: truth and
predictions as uint16-centimetre deflate TIFFs with ~1% missing truth pixels and realistic
heights (blocky buildings, smooth tree canopies, lidar-like noise), plus VFLOW json files.
Then runs ``geopose evaluate PRED TRUTH`` as a subprocess ``--repeat`` times and prints the
wall time and the peak resident memory summed over the process tree (sampled from /proc every
5 ms; the single-process figure is also read from ``getrusage`` of the child).

    python benchmarks/bench_evaluate.py [--data DIR] [--workers N] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CITIES = ("ARG", "ATL", "JAX", "OMA")


def make_agl(rng: np.random.Generator, size: int) -> np.ndarray:
    """A realistic-looking AGL map (m, float32, NaN ~1%): buildings, trees, noise."""
    import cv2

    h = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(150, 400))):
        rows, cols = rng.integers(10, 120, 2)
        r, c = rng.integers(0, size, 2)
        block = h[r : r + rows, c : c + cols]
        np.maximum(block, rng.uniform(3, 60), out=block)
    coarse = rng.random((size // 16, size // 16)).astype(np.float32)
    canopy = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    np.maximum(h, np.where(canopy > 0.7, (canopy - 0.7) * 40, 0), out=h)
    h += rng.normal(0, 0.15, h.shape).astype(np.float32)
    np.clip(h, 0, None, out=h)
    h[rng.random(h.shape) < 0.01] = np.nan
    return h


def make_data(root: Path, size: int = 2048, per_city: int = 5, seed: int = 0) -> None:
    """Write ``root/truth`` and ``root/pred`` (a noisy, slightly blurred prediction)."""
    import cv2

    from geopose.io import agl_name, vflow_name, write_agl, write_vflow

    rng = np.random.default_rng(seed)
    for city in CITIES:
        for i in range(per_city):
            stem = f"{city}_{i:04d}"
            agl = make_agl(rng, size)
            angle, scale = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(1, 3))
            write_agl(root / "truth" / agl_name(stem), agl)
            write_vflow(root / "truth" / vflow_name(stem), angle, scale)
            pred = cv2.GaussianBlur(np.nan_to_num(agl), (0, 0), 2.0)
            pred += rng.normal(0, 1.0, pred.shape).astype(np.float32)
            write_agl(root / "pred" / agl_name(stem), np.clip(pred, 0, None))
            write_vflow(
                root / "pred" / vflow_name(stem),
                (angle + rng.normal(0, 0.1)) % (2 * math.pi),
                scale * rng.uniform(0.9, 1.1),
            )
    (root / "READY").write_text("ok\n")


def _tree_rss(pid: int) -> int:
    """Resident memory (bytes) of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(entry.name)
        children.setdefault(int(fields[1]), []).append(p)
        rss[p] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_once(cmd: list[str]) -> tuple[float, int, int, float]:
    """(wall s, peak tree RSS bytes sampled, child max RSS bytes, child CPU s user+sys)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        done = threading.Event()

        def poll() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                time.sleep(0.005)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        poller.join()
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"{cmd} failed ({proc.returncode}): {err.read().decode()}")
    return wall, peak, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def _summary(name: str, rows: list) -> str:
    walls = sorted(r[0] for r in rows)
    cpus = sorted(r[3] for r in rows)
    return (
        f"{name}: wall median {walls[len(walls) // 2]:.3f} s (min {walls[0]:.3f}, "
        f"max {walls[-1]:.3f}); CPU user+sys median {cpus[len(cpus) // 2]:.2f} s; "
        f"peak RSS tree {max(r[1] for r in rows) / 2**20:.0f} MiB (sampled), "
        f"child max RSS {max(r[2] for r in rows) / 2**20:.0f} MiB"
    )


POOLS = """
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from geopose.io import city_of
from geopose.metrics import ScoreAccumulator
from geopose.metrics.evaluate import _score_one, pair_folders, score_pairs
kind, n = sys.argv[3], int(sys.argv[4])
pairing = pair_folders(sys.argv[1], sys.argv[2])
if kind == "threads":
    final = score_pairs(pairing, n)["final"]
else:
    acc = ScoreAccumulator()
    with ProcessPoolExecutor(n) as ex:
        for stem, s in zip(pairing.pairs, ex.map(partial(_score_one, pairing), pairing.pairs)):
            acc.add(city_of(stem), s)
    final = acc.compute()["final"]
print(final)
"""


def compare_pools(data: Path, repeat: int) -> None:
    """Threads (what geopose evaluate does) against a process pool (fork) doing the same work,
    both from the same short script (same imports, no CLI)."""
    pred, truth = str(data / "pred"), str(data / "truth")
    for kind in ("threads", "processes"):
        for n in (1, 2, 4):
            cmd = [sys.executable, "-c", POOLS, pred, truth, kind, str(n)]
            rows = [run_once(cmd) for _ in range(repeat)]
            print("  " + _summary(f"{kind} x{n}", rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="data folder (generated there once)")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--per-city", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="--workers of geopose evaluate")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compare", action="store_true", help="also threads vs processes, 1-4")
    args = ap.parse_args()
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_evaluate_")
        args.data = Path(tmp.name)
    if not (args.data / "READY").exists():
        t0 = time.perf_counter()
        make_data(args.data, args.size, args.per_city)
        print(f"generated data in {time.perf_counter() - t0:.1f} s")
    files = list((args.data / "truth").glob("*_AGL.tif"))
    raw = sum(f.stat().st_size for f in files)
    print(
        f"{len(files)} images of {args.size}², truth AGL {raw / 1e6:.1f} MB compressed "
        f"({len(files) * args.size**2 * 2 / raw:.2f}:1 deflate ratio)"
    )
    exe = [sys.executable, "-m", "geopose.cli.main"]
    cmd = exe + ["evaluate", str(args.data / "pred"), str(args.data / "truth")]
    cmd += ["-j", str(args.workers)]
    help_rows = [run_once(exe + ["--help"]) for _ in range(3)]
    print(_summary("geopose --help (start-up and imports)", help_rows))
    rows = [run_once(cmd) for _ in range(args.repeat)]
    print(_summary(f"geopose evaluate -j {args.workers}", rows))
    if args.compare:
        print("threads vs processes (same work and imports, no CLI; whole process tree):")
        compare_pools(args.data, args.repeat)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
