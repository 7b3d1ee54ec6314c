"""Training speed: the data pipeline (random crops per second per worker, from JPEG 2000 files
and from a ``geopose prepare`` cache, without and with heavy augmentation) and the model
(training images per second for a recipe on this machine's CPU or GPU).

    python benchmarks/bench_train.py [--size 2048] [--images 4] [--crop 512] [--crops 24]
                                     [--recipe cpu_small] [--train-crop 256] [--batch 8]
                                     [--steps 6] [--gpu-recipe bloodaxe_b7]
                                     [--skip-data] [--set KEY=VALUE ...]

The data set is made with ``geopose.synth.write_dataset`` (JPEG 2000 like the competition) in a
temporary folder. Each data-pipeline figure is one process (= one DataLoader worker): crops/s
over ``--crops`` crops drawn at random. Training: forward + backward + AdamW step on random
batches, after two warm-up steps; on a GPU also ``--gpu-recipe`` at bf16-mixed with its peak
memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def crops_per_second(source, crop: int, level: str, n: int) -> float:
    """Random ``crop``² training items per second from ``source`` at augmentation ``level``."""
    from geopose.data import GeoposeDataset
    from geopose.transforms import GeometricAugment, PhotometricAugment

    ds = GeoposeDataset(
        source,
        list(range(len(source))),
        train=True,
        crop=crop,
        geometric=GeometricAugment(level),
        photometric=PhotometricAugment(level, crop),
    )
    ds[(0, 0)]  # warm-up (imports, first decode)
    start = time.perf_counter()
    for i in range(n):
        ds[(i % len(ds), 1000 + i)]
    return n / (time.perf_counter() - start)


def train_images_per_second(
    recipe: str,
    crop: int,
    batch: int,
    steps: int,
    device: str,
    precision: str = "32",
    overrides: list[str] | None = None,
) -> tuple[float, float]:
    """(images/s, peak GPU memory GiB or NaN) of forward+backward+AdamW on random batches
    (``overrides``: ``key=value`` as ``geopose train`` takes them)."""
    from geopose.config import resolve_config
    from geopose.models import GeoposeLoss, create_model

    rec = resolve_config(recipe, list(overrides or []))
    model = create_model(rec, pretrained=False).to(device).train()
    model = model.to(memory_format=torch.channels_last)  # as geopose train does
    loss_fn = GeoposeLoss(rec["loss"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as geopose train
    g = torch.Generator().manual_seed(0)
    agl = torch.rand(batch, 1, crop, crop, generator=g) * 20
    batch_d = {
        "image": torch.rand(batch, 3, crop, crop, generator=g).contiguous(
            memory_format=torch.channels_last
        ),
        "agl": agl,
        "mag": agl * 2.0,
        "direction": torch.nn.functional.normalize(torch.randn(batch, 2, generator=g), dim=1),
        "scale": torch.full((batch,), 2.0),
        "gsd": torch.full((batch,), 0.5),
        "city": torch.zeros(batch, dtype=torch.long),
    }
    batch_d = {k: v.to(device) for k, v in batch_d.items()}
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None
        ):
            out = model(batch_d["image"], batch_d["gsd"], batch_d["city"])
            total, _ = loss_fn(out, batch_d)
        total.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return steps * batch / seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="synthetic image side, px")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--crop", type=int, default=512, help="data-pipeline crop side, px")
    ap.add_argument("--crops", type=int, default=24, help="crops timed per configuration")
    ap.add_argument("--recipe", default="cpu_small")
    ap.add_argument("--train-crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--gpu-recipe", default="bloodaxe_b7")
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of --recipe (repeatable), e.g. model.agl.upsample=features",
    )
    args = ap.parse_args()
    from geopose.config import resolve_config
    from geopose.errors import ConfigError

    try:  # a bad --recipe or --set is one line, before any data is made
        resolve_config(args.recipe, list(args.overrides))
    except ConfigError as e:
        ap.error(str(e))

    from geopose.data import CacheSource, FolderSource, prepare_cache
    from geopose.synth.dataset import write_dataset

    load = os.getloadavg()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if not args.skip_data:
        with tempfile.TemporaryDirectory() as tmp:
            data, cache = Path(tmp) / "data", Path(tmp) / "cache"
            t0 = time.perf_counter()
            write_dataset(data, args.images, 0, args.size, seed=0)
            print(
                f"synthetic set: {args.images} images of {args.size}² in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            t0 = time.perf_counter()
            prepare_cache(data, cache, split="train")
            print(f"geopose prepare: {(time.perf_counter() - t0) / args.images:.2f} s/image")
            print(f"\ndata pipeline, {args.crop}² crops per second, one process (= one worker):")
            print(f"{'source':<24}{'no aug':>10}{'light':>10}{'heavy':>10}")
            for name, source in (
                ("JPEG 2000 files", FolderSource(data)),
                ("prepare cache (.npy)", CacheSource(cache)),
            ):
                rates = [
                    crops_per_second(source, args.crop, lvl, args.crops)
                    for lvl in ("none", "light", "heavy")
                ]
                print(f"{name:<24}" + "".join(f"{r:>10.1f}" for r in rates))
    from geopose.training.run import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    print(
        f"\ntraining, {args.recipe} {' '.join(args.overrides)} at {args.train_crop}², "
        f"batch {args.batch}, CPU, channels_last "
        f"(native bf16: {native}, so geopose train uses {'bf16' if native else 'fp32'}):"
    )
    from geopose.runtime import reuse_freed_memory

    # as geopose train does on a CPU; MALLOC_TRIM_THRESHOLD_=131072 in the environment turns
    # it off (glibc's defaults: every activation on fresh pages)
    print(f"  freed memory reused (geopose.runtime): {reuse_freed_memory()}")
    threads = torch.get_num_threads()
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        for precision in ("32", "bf16"):
            ips, _ = train_images_per_second(
                args.recipe,
                args.train_crop,
                args.batch,
                args.steps,
                "cpu",
                precision,
                args.overrides,
            )
            print(
                f"  {n} thread(s) {precision:>4}: {ips:.2f} images/s "
                f"({args.batch / ips:.2f} s per step)"
            )
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for recipe, crop in ((args.gpu_recipe, 512), (args.recipe, 512)):
            ips, peak = train_images_per_second(recipe, crop, 8, 20, "cuda", "bf16")
            print(
                f"GPU {name}: {recipe} 512² bf16 batch 8: {ips:.1f} images/s, peak {peak:.1f} GiB"
            )
    else:
        print("no GPU here: GPU figures not measured")


if __name__ == "__main__":
    main()
