"""Speed of the synthetic city generator (``geopose synth``), per core.

Prints, at 512² and 2048², the CPU seconds per image (``time.process_time``: this process and
its threads, so a busy shared machine does not inflate it) and wall seconds of each stage:
``make_scene``, ``render`` (clean), the whole image as ``write_dataset`` makes it (scene,
sensor render, truth troubles, JPEG 2000 + TIFF + JSON written), and the images/s per core
that follow from the CPU time. Also the mean AGL per city over many scenes (the styles'
calibration against the real cities' means) and the parallel speed-up of ``write_dataset``.

    python benchmarks/bench_synth.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import tempfile
import time

import numpy as np

from geopose.synth import STYLES, make_scene, render, write_dataset
from geopose.synth.dataset import TruthOptions, _Job, _write_image

CITIES = ("ARG", "ATL", "JAX", "OMA")


def timed(fn, n: int) -> tuple[float, float]:
    """(CPU s, wall s) per call over ``n`` calls."""
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.process_time() - c0) / n, (time.perf_counter() - w0) / n


def stage_table(size: int, n: int) -> None:
    scenes = [make_scene(CITIES[i % 4], size, 100 + i) for i in range(n)]
    rows = {
        "make_scene": timed(lambda i: make_scene(CITIES[i % 4], size, 100 + i), n),
        "render (clean)": timed(lambda i: render(scenes[i], 0.3 + i, 0.9, 3.9, nadir=False), n),
        "render (sensor + nadir)": timed(
            lambda i: render(scenes[i], 0.3 + i, 0.9, 3.9, sensor=True, seed=i), n
        ),
    }
    with tempfile.TemporaryDirectory() as d:
        jobs = [
            _Job("train", i, CITIES[i % 4], size, 0, d, False, False, TruthOptions(), 40.0)
            for i in range(n)
        ]
        rows["whole image, files written"] = timed(lambda i: _write_image(jobs[i]), n)
    print(f"\n{size}² ({n} images, cities cycled):")
    print(f"  {'stage':30s} {'CPU s/img':>10s} {'wall s/img':>11s} {'img/s/core':>11s}")
    for name, (cpu, wall) in rows.items():
        print(f"  {name:30s} {cpu:10.3f} {wall:11.3f} {1 / cpu:11.2f}")


def parallel(size: int, n: int, workers: int) -> None:
    out = {}
    for w in (1, workers):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            write_dataset(os.path.join(d, "x"), n, 0, size, 0, workers=w)
            out[w] = time.perf_counter() - t
    print(
        f"\nwrite_dataset {n}×{size}²: workers=1 {n / out[1]:.2f} img/s, "
        f"workers={workers} {n / out[workers]:.2f} img/s (wall, includes process start-up)"
    )


def calibration(n: int, size: int = 384) -> None:
    print(f"\nmean AGL (m) over {n} scenes of {size}² per city (nadir heights):")
    for city in CITIES:
        means = [float(make_scene(city, size, 5000 + i).height.mean()) for i in range(n)]
        target = STYLES[city].mean_agl
        print(
            f"  {city}: {np.mean(means):5.2f} ± {np.std(means) / math.sqrt(n):4.2f} "
            f"(image sd {np.std(means):4.2f}); real city {target:.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    args = ap.parse_args()
    q = args.quick
    print("machine:", os.uname().machine, f"{os.cpu_count()} CPUs;", end=" ")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    make_scene("OMA", 64, 0)  # warm-up (imports, caches)
    stage_table(512, 4 if q else 16)
    stage_table(2048, 1 if q else 4)
    parallel(256, 4 if q else 16, 2)
    calibration(4 if q else 40)
    print("\nafter:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
