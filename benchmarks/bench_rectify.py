"""Speed of ``geopose.rectify.rectify`` on one core (the process is pinned to one CPU).

    python benchmarks/bench_rectify.py [--size 2048] [--repeats 5] [--loop-size 256]

Makes a size×size oblique-like AGL map (blocky buildings 3-60 m, smooth tree canopies), clean
and with 0.2 m pixel noise (a pessimistic prediction: every pixel jitters, many one-pixel gaps),
and an RGB, then times ``rectify`` (median of ``--repeats`` after one warm-up) with RGB and gap
filling, without filling, and heights only. For comparison it times a
plain Python loop over pixels doing the same z-buffered forward map (the public baseline's
approach) on a ``--loop-size``² crop and scales it to size² by the pixel count.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from geopose.rectify import rectify  # noqa: E402


def make_agl(rng: np.random.Generator, size: int) -> np.ndarray:
    """Buildings and trees (m, float32), like a city tile's AGL."""
    import cv2

    h = np.zeros((size, size), np.float32)
    for _ in range(int(300 * (size / 2048) ** 2) + 5):
        rows, cols = rng.integers(10, 120, 2)
        r, c = rng.integers(0, size, 2)
        block = h[r : r + rows, c : c + cols]
        np.maximum(block, rng.uniform(3, 60), out=block)
    trees = cv2.GaussianBlur((rng.random((size, size)) < 0.002).astype(np.float32), (0, 0), 6)
    h = np.maximum(h, trees / max(float(trees.max()), 1e-6) * 15)
    return h


def add_noise(rng: np.random.Generator, agl: np.ndarray, sigma: float = 0.2) -> np.ndarray:
    """Pixel-wise Gaussian noise (m), clipped at 0: a pessimistic stand-in for a prediction."""
    return np.clip(agl + rng.normal(0, sigma, agl.shape).astype(np.float32), 0, None)


def loop_rectify(rgb: np.ndarray, agl: np.ndarray, angle: float, scale: float):
    """Reference: a Python loop over pixels (nearest ground pixel, tallest wins)."""
    hgt, wid = agl.shape
    out_rgb = np.zeros_like(rgb)
    out_h = np.full((hgt, wid), -np.inf, np.float32)
    sx, sy = math.sin(angle), math.cos(angle)
    for r in range(hgt):
        for c in range(wid):
            z = float(agl[r, c])
            x = round(c + z * scale * sx)
            y = round(r + z * scale * sy)
            if 0 <= x < wid and 0 <= y < hgt and z > out_h[y, x]:
                out_h[y, x] = z
                out_rgb[y, x] = rgb[r, c]
    return out_rgb, out_h


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` runs after one warm-up (CPU
    time is what the process used, so it is less sensitive to other jobs on a busy machine)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loop-size", type=int, default=256)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    rng = np.random.default_rng(0)
    n = args.size
    clean = make_agl(rng, n)
    agl = add_noise(rng, clean)
    rgb = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
    angle, scale = 1.1, 2.5  # px/m: a 60 m tower moves 150 px
    print(
        f"rectify {n}×{n}, one core ({platform.processor() or platform.machine()}), "
        f"numpy {np.__version__}, median of {args.repeats}"
    )
    for label, heights in (("clean AGL", clean), ("AGL + 0.2 m pixel noise", agl)):
        res = rectify(rgb, heights, angle, scale)
        print(
            f"  {label}: visible {100 * res.visible_fraction:.1f}%, one-pixel gaps filled "
            f"{100 * res.filled.mean():.2f}% of pixels"
        )
        cases = {
            "RGB + AGL, gap filling": lambda h=heights: rectify(rgb, h, angle, scale),
            "RGB + AGL, no filling": lambda h=heights: rectify(
                rgb, h, angle, scale, fill_holes=False
            ),
            "AGL only, gap filling": lambda h=heights: rectify(None, h, angle, scale),
        }
        for name, fn in cases.items():
            wall, cpu = timed(fn, args.repeats)
            print(f"    {name:26s} {wall:7.3f} s wall {cpu:7.3f} s CPU")
    m = args.loop_size
    t = time.process_time()
    loop_rgb, loop_h = loop_rectify(rgb[:m, :m], agl[:m, :m], angle, scale)
    t_loop = (time.process_time() - t) * (n * n) / (m * m)
    ours = rectify(rgb[:m, :m], agl[:m, :m], angle, scale, fill_holes=False)
    same = np.isfinite(loop_h) == ~ours.occluded
    agree = np.all(loop_rgb == ours.rgb, -1)[~ours.occluded].mean()
    print(
        f"  Python loop, {m}² scaled to {n}²: {t_loop:7.1f} s CPU  "
        f"(same reached pixels {100 * same.mean():.2f}%, same colour {100 * agree:.2f}%)"
    )


if __name__ == "__main__":
    main()
