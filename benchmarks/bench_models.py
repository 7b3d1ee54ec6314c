"""Parameters and forward FLOPs of every recipe at 512², and CPU forward/train-step times of
the CPU recipe. Prints a markdown table (pasted into BENCHMARKS.md, section Models).

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on meta tensors (no arithmetic is
done), for one 512×512 image; a multiply-add counts as 2 FLOPs.

    python benchmarks/bench_models.py [--size 512] [--cpu-size 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from geopose.models import GeoposeLoss, create_model, list_recipes, load_recipe


def count(recipe: str, size: int) -> tuple[float, float]:
    """(parameters in millions, forward GFLOPs for one size×size image) on the meta device."""
    with torch.device("meta"):
        model = create_model(recipe, pretrained=False).eval()
        image = torch.rand(1, 3, size, size)
        gsd, city = torch.full((1,), 0.3), torch.zeros(1, dtype=torch.long)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image, gsd, city)
    return params, counter.get_total_flops() / 1e9


def cpu_times(recipe: str, size: int, batch: int, repeats: int) -> tuple[float, float]:
    """(eval forward ms per image, train step ms per batch of ``batch``) on this CPU."""
    torch.manual_seed(0)
    model = create_model(recipe, pretrained=False)
    loss_fn = GeoposeLoss(load_recipe(recipe)["loss"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image = torch.rand(batch, 3, size, size)
    gsd, city = torch.full((batch,), 0.3), torch.zeros(batch, dtype=torch.long)
    agl = torch.rand(batch, 1, size, size) * 20
    batch_d = {
        "agl": agl,
        "mag": agl,
        "direction": torch.tensor([[0.0, 1.0]]).expand(batch, 2),
        "scale": torch.ones(batch),
    }
    model.eval()
    with torch.no_grad():
        model(image[:1], gsd[:1], city[:1])
        t = time.perf_counter()
        for _ in range(repeats):
            model(image[:1], gsd[:1], city[:1])
        fwd = (time.perf_counter() - t) / repeats * 1e3
    model.train()
    steps = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        total, _ = loss_fn(model(image, gsd, city), batch_d)
        opt.zero_grad()
        total.backward()
        opt.step()
        steps.append(time.perf_counter() - t)
    return fwd, sum(steps[1:]) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cpu-recipe", default="cpu_small")
    ap.add_argument("--cpu-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| recipe | encoder | decoder | params (M) | GFLOPs @ {args.size}² |")
    print("|---|---|---|---:|---:|")
    for recipe in list_recipes():
        m = load_recipe(recipe)["model"]
        params, gflops = count(recipe, args.size)
        dec = (m.get("decoder") or {}).get("kind", "unet")
        print(f"| {recipe} | {m['encoder']} | {dec} | {params:.1f} | {gflops:.0f} |")
    fwd, step = cpu_times(args.cpu_recipe, args.cpu_size, args.batch, args.repeats)
    s = args.cpu_size
    print(
        f"\n{args.cpu_recipe} on CPU at {s}²: forward {fwd:.0f} ms/image (eval, batch 1); "
        f"train step {step:.0f} ms per batch of {args.batch} "
        f"({args.batch / step * 1e3:.1f} images/s)"
    )


if __name__ == "__main__":
    main()
