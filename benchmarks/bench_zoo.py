"""Seconds per image of the published challenge models run through geopose (``predict``'s path).

Each family is built from its reference fixture (``tests/fixtures/zoo``: the exact published
architecture and layout; random weights, which do not change the speed), converted like a
downloaded file, and timed with ``Predictor.predict`` on a random H×W×3 uint8 image per TTA mode.

    python benchmarks/bench_zoo.py                                  # all families, 512², d4
    python benchmarks/bench_zoo.py --sizes 512 2048 --tta none d4 --families baseline first
    python benchmarks/bench_zoo.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import zoo_fixtures as zf  # noqa: E402

from geopose.inference import Predictor  # noqa: E402
from geopose.models import load_model  # noqa: E402


def build(name: str) -> torch.nn.Module:
    """The fixture's published file, written to a temporary folder and loaded by geopose."""
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_model(zf.write_published(name, Path(tmp) / name))
    return model


def seconds(pred: Predictor, size: int, repeats: int, cuda: bool) -> tuple[float, float]:
    """(median wall s, median process CPU s) per image, after one warm-up call if repeats."""
    rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    wall, cpu = [], []
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        pred.predict(rgb, 0.35, 2)
        if cuda:
            torch.cuda.synchronize()
        if i > 0 or repeats == 0:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if repeats == 0:
                break
    return float(np.median(wall)), float(np.median(cpu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(zf.FAMILY_FIXTURES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[512])
    ap.add_argument("--tta", nargs="+", default=["d4"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1, help="images (views) per forward")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls after a warm-up; 0: one")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    print(
        f"device {args.device} ({where}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'family':22s} {'params':>8s} {'size':>5s} {'tta':>4s} {'wall s':>8s} {'CPU s':>8s}")
    for name in args.families:
        model = build(name)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        pred = Predictor([model], tta="none", device=args.device, max_batch=args.batch)
        for size in args.sizes:
            for tta in args.tta:
                pred.tta = tta
                wall, cpu = seconds(pred, size, args.repeats, cuda)
                print(
                    f"{name:22s} {n:7.1f}M {size:5d} {tta:>4s} {wall:8.2f} {cpu:8.2f}", flush=True
                )
        del model, pred
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {rss:.1f} GiB")


if __name__ == "__main__":
    main()
