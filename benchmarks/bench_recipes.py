"""Train the public benchmark's architecture (`baseline`) and the CPU recipe side by side.

Same synthetic data, same wall-clock budget, same seed; each model predicts the held-out test
images (with the TTA its training suits: D4 for `baseline`, none for `cpu_small`) and is
scored with `geopose evaluate`'s function. Prints one row per recipe.

    python benchmarks/bench_recipes.py --minutes 5 --out /tmp/bench_recipes
    python benchmarks/bench_recipes.py --minutes 4 --precision 32-true  # float32 on any CPU
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from geopose.demo import (
    DemoSettings,
    demo_tta,
    evaluate_test,
    make_cache,
    make_data,
    predict_test,
    train_config,
)
from geopose.training.run import train


def train_recipe(recipe: str, s: DemoSettings, minutes: float) -> Path:
    """Train ``recipe`` on the demo data for ``minutes``; returns the checkpoint to use."""
    summary = train(train_config(s, minutes, recipe), s.run, overwrite=True)
    best = summary.get("best_checkpoint")
    return Path(best) if best else Path(summary["last_checkpoint"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-recipes"))
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per recipe")
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--test", type=int, default=24)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--uniform-angles", action="store_true")
    ap.add_argument(
        "--precision",
        default="auto",
        help="train.precision of both recipes (32-true: float32, the common CPU case)",
    )
    ap.add_argument(
        "--recipes",
        nargs="+",
        choices=("baseline", "cpu_small"),
        default=["baseline", "cpu_small"],
        help="which recipes to run (e.g. only cpu_small after a change to it)",
    )
    args = ap.parse_args()

    common = [
        "train.epochs=1000",
        "train.progress=false",
        "model.pretrained=false",
        f"train.precision={args.precision}",
    ]
    recipes = {
        # the public benchmark: resnet34 UNet, pooled direction, lstsq scale, MSE, lr 1e-4
        "baseline": [*common, "data.aug=light", "train.scheduler=cosine"],
        # ours: its recipe carries its CPU settings (BENCHMARKS.md, Demo)
        "cpu_small": common,
    }
    base = DemoSettings(
        out=args.out,
        n_train=args.train,
        n_test=args.test,
        size=args.size,
        seed=args.seed,
        uniform_angles=args.uniform_angles,
    )
    make_data(base, print)
    rows = []
    for recipe, extra in ((r, recipes[r]) for r in args.recipes):
        s = replace(base, out=args.out / recipe, data_dir=base.data, overrides=extra)
        s = replace(s, tta=demo_tta(s, recipe))  # each recipe's own (cpu_small: none)
        t0 = time.time()
        make_cache(s, print)
        ckpt = train_recipe(recipe, s, args.minutes)
        predict_test(s, ckpt, print)
        scores = evaluate_test(s, print)
        c = scores["cities"]
        rows.append(
            {
                "recipe": recipe,
                "final": scores["final"],
                "r2_agl": sum(v["r2_agl"] for v in c.values()) / len(c),
                "r2_vflow": sum(v["r2_vflow"] for v in c.values()) / len(c),
                "angle_error_deg": sum(v["angle_error_deg"] for v in c.values()) / len(c),
                "minutes": round((time.time() - t0) / 60, 1),
            }
        )
    print(json.dumps(rows, indent=1))
    print(f"\n{'recipe':<10} {'score':>7} {'R2 AGL':>7} {'R2 VFLOW':>8} {'angle°':>7}")
    for r in rows:
        print(
            f"{r['recipe']:<10} {r['final']:7.3f} {r['r2_agl']:7.3f} {r['r2_vflow']:8.3f} "
            f"{r['angle_error_deg']:7.1f}"
        )


if __name__ == "__main__":
    main()
