"""Seconds per image for ``geopose predict``'s model path (ensemble runner + TTA [+ tiles]).

Times ``Predictor.predict`` on a random H×W×3 uint8 image (default 2048², the competition size)
for a randomly initialised recipe (weights do not change the speed), per TTA mode, after one
warm-up call. On CUDA the predictor runs bf16 autocast + channels_last.

    python benchmarks/bench_predict.py                                   # cpu_small, none + d4
    python benchmarks/bench_predict.py --recipe bloodaxe_b7 --device cuda --tta d4 --batch 8
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch

from geopose.inference import Predictor
from geopose.models import create_model


def bench(args: argparse.Namespace, tta: str) -> tuple[float, float, float]:
    """Median wall seconds, min wall seconds and median process CPU seconds per image."""
    torch.manual_seed(0)
    model = create_model(args.recipe, pretrained=False)
    pred = Predictor(
        [model], tta=tta, device=args.device, max_batch=args.batch, tile_size=args.tile_size
    )
    rgb = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    times, cpu = [], []
    for i in range(args.repeats + 1):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        pred.predict(rgb, 0.3, 0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i > 0 or args.repeats == 0:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return float(np.median(times)), float(np.min(times)), float(np.median(cpu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cpu_small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tta", nargs="+", default=["none", "d4"])
    ap.add_argument("--batch", type=int, default=1, help="images (views × tiles) per forward")
    ap.add_argument("--tile-size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=1, help="timed calls after one warm-up")
    args = ap.parse_args()
    dev = args.device
    where = torch.cuda.get_device_name(0) if dev.startswith("cuda") else platform.processor()
    print(
        f"recipe {args.recipe}, {args.size}² px, device {dev} ({where or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"tile {args.tile_size}, load {os.getloadavg()[0]:.1f}"
    )
    if args.repeats == 0:
        print("  (no warm-up: each figure is one cold call)")
    for tta in args.tta:
        med, best, cpu = bench(args, tta)
        print(f"  tta {tta:5s}: {med:8.2f} s/image wall (best {best:.2f}), {cpu:.2f} s CPU")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  peak RSS {rss:.1f} GiB")
    if dev.startswith("cuda"):
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
