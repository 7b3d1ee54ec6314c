"""Scene prediction at satellite-product size: peak memory, wall time against the model's own
time on the same pixels, and the outputs' COG layout.

Builds (once; reused by later runs of the same size) a synthetic SIZE × SIZE 4-band uint16
GeoTIFF like a pan-sharpened product: ``geopose synth`` renders of 1024² px (one viewing
geometry for the whole scene, as from one satellite pass), tiled; 8-bit colours scaled to
12-bit DN with sensor noise; band order blue, green, red, NIR (a NIR-like 4th band, the bands
named in the file so the RGB bands are found from the metadata); a nodata (0) border around
a rotated footprint, as in an orthorectified strip; EPSG:32617 at 0.3 m. Then, in a fresh
child process (so its peak RSS is the prediction's own), it predicts the scene with a
randomly initialised ``cpu_small`` (weights do not change the speed; softplus heights and a
pooled direction head so that the outputs hold non-trivial values) through
``geopose.inference.scene.predict_scene`` and prints:

- the peak RSS of that process (target <= 4 GB);
- wall time against the model's own time on the same pixels: the per-tile time of
  ``Predictor.predict_tiles`` on a few of the scene's tiles held in memory (no I/O running;
  timed before and after the run, averaged), times the number of tiles predicted (target:
  wall <= 1.3× that); the same for process CPU time (all threads), steadier on a shared box;
- whether ``_AGL.tif`` and ``_FLOW.tif`` are valid COGs.

    python benchmarks/bench_scene.py                       # 16384², CPU, TTA none
    python benchmarks/bench_scene.py --size 4096 --rectify  # a quick run, nadir views too
    python benchmarks/bench_scene.py --no-threads           # reading/writing in the main thread
    python benchmarks/bench_scene.py --torch-threads 1      # the model leaves a core to the I/O
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RENDER = 1024
"""Side (px) of one synthetic render."""
UNIQUE = 16
"""Distinct renders the mosaic is tiled from."""
ANGLE, SCALE, SUN = 0.9, 0.9, 3.7
"""The scene's viewing geometry: flow angle (rad), scale (px/m), sun direction (rad)."""


def _renders(n: int, seed: int) -> list[np.ndarray]:
    """``n`` sensor-like RGB renders (1024² uint8) of the four synthetic cities."""
    from geopose.synth import make_scene, render

    out = []
    for i in range(n):
        city = ("ATL", "JAX", "OMA", "ARG")[i % 4]
        scene = make_scene(city, RENDER, seed=seed + i, gsd=0.3)
        out.append(render(scene, ANGLE, SCALE, SUN, sensor=True, seed=seed + i, nadir=False).rgb)
    return out


def _footprint(rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """True inside the product's footprint: a square rotated by 8°, inset 4% (nodata outside)."""
    c = (size - 1) / 2
    a = math.radians(8)
    y, x = rows[:, None] - c, cols[None, :] - c
    u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
    half = 0.96 * size / 2 / (math.cos(a) + math.sin(a))
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def build_scene(path: Path, size: int, seed: int = 0) -> None:
    """Write the synthetic SIZE² 4-band uint16 GeoTIFF (module doc), strip by strip."""
    import rasterio
    from rasterio.transform import from_origin

    tiles = _renders(UNIQUE, seed)
    rng = np.random.default_rng(seed)
    n = math.ceil(size / RENDER)
    layout = rng.integers(0, UNIQUE, (n, n))
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint16",
        nodata=0,
        crs="EPSG:32617",
        transform=from_origin(500_000.0, 4_500_000.0, 0.3, 0.3),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        bigtiff="YES",
    )
    tmp = path.with_name(path.name + ".part")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(("blue", "green", "red", "nir"), 1):
            dst.set_band_description(i, name)
        for ti in range(n):
            r0, h = ti * RENDER, min(RENDER, size - ti * RENDER)
            rgb = np.concatenate([tiles[k][:h] for k in layout[ti]], axis=1)[:, :size]
            f = rgb.astype(np.float32)
            r, g, b = f[..., 0], f[..., 1], f[..., 2]
            nir = np.clip(1.4 * g - 0.3 * r + 0.1 * b, 0, 255)  # vegetation bright in NIR
            dn = np.stack([b, g, r, nir]) * 16 + rng.normal(8, 6, (4, h, rgb.shape[1]))
            dn = np.clip(dn, 1, 4095).astype(np.uint16)  # 12-bit DN; 0 is nodata
            inside = _footprint(np.arange(r0, r0 + h), np.arange(size), size)
            dn[:, ~inside] = 0
            dst.write(dn, window=rasterio.windows.Window(0, r0, size, h))
    os.replace(tmp, path)


def _child(args: dict, q: mp.Queue) -> None:
    """Predict the scene in this (fresh) process and report timings and peak RSS."""
    import torch
    from rasterio.windows import Window

    from geopose.inference import Predictor
    from geopose.inference.scene import predict_scene
    from geopose.inference.tiling import tile_starts
    from geopose.io.cog import is_cog
    from geopose.io.scene import Scene
    from geopose.models import create_model

    torch.manual_seed(0)
    if args["torch_threads"]:
        torch.set_num_threads(args["torch_threads"])
    # cpu_small with softplus heights and a pooled direction head: at random init its outputs
    # are positive heights and a direction (the ramp fit finds none), so the AGL and FLOW
    # files hold non-trivial floats to compress, as a trained model's would; same cost.
    model = create_model(
        "cpu_small",
        pretrained=False,
        agl={"channels": 16, "gsd": "concat", "city": True, "out_activation": "softplus"},
        direction={"kind": "pooled"},
    )
    predictor = Predictor([model], tta=args["tta"], device=args["device"], max_batch=1)
    tile = args["tile"]
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    with Scene(args["scene"]) as scene:
        # The model's own time per tile: a few of the scene's tiles held in memory, after a
        # warm-up pass over them all; nothing else running. Timed before and after the run:
        # without geopose.runtime's reuse of freed memory the first figure would carry page
        # faults that glibc's own mmap threshold stops only later in a long run.
        starts = tile_starts(scene.height, tile, args["overlap"])
        mid = starts[len(starts) // 2]
        calib = [scene.read(Window(c, mid, tile, tile))[0] for c in starts[: args["calib"] + 1]]
        for rgb in calib:
            predictor.predict_tiles(rgb[None], scene.gsd)

        def model_alone() -> tuple[float, float]:
            """Wall and CPU seconds per tile of the model alone (mean over the tiles)."""
            t0, c0 = time.perf_counter(), time.process_time()
            for rgb in calib[1:]:
                predictor.predict_tiles(rgb[None], scene.gsd)
            n = max(1, len(calib) - 1)
            return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

        before = model_alone()
        load0 = os.getloadavg()
        t0, c0 = time.perf_counter(), time.process_time()
        res = predict_scene(
            predictor,
            scene,
            out,
            "bench",
            tile=tile,
            overlap=args["overlap"],
            rectify=args["rectify"],
            threads=args["threads"],
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        load1 = os.getloadavg()
        after = model_alone()  # the load of a shared machine drifts: time it on both sides
        per_tile, cpu_tile = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    q.put(
        dict(
            wall=wall,
            cpu=cpu,
            model_in_run=res.model_seconds,
            per_tile=per_tile,
            cpu_tile=cpu_tile,
            per_tile_range=(before[0], after[0]),
            tiles=res.tiles,
            empty=res.empty_tiles,
            angle=res.angle,
            scale=res.scale,
            known=res.direction_known,
            cog={k: is_cog(p) for k, p in res.paths.items() if p.suffix == ".tif"},
            sizes={k: p.stat().st_size for k, p in res.paths.items()},
            rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            load=(load0, load1),
            threads=torch.get_num_threads(),
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384, help="scene side, px")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--tta", default="none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rectify", action="store_true", help="also the nadir views")
    ap.add_argument(
        "--no-threads",
        dest="threads",
        action="store_false",
        help="read and write in the main thread (no overlap with the model)",
    )
    ap.add_argument("--calib", type=int, default=8, help="tiles timed for the model's own time")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="intra-op threads of the model (0: torch's default, one per core); cores - 1 "
        "leaves the reader and writer threads a core, as on a machine with cores to spare",
    )
    ap.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "geopose_bench_scene"),
        help="folder for the scene (kept, reused) and the outputs",
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene_{args.size}.tif"
    if not scene.is_file():
        t0 = time.perf_counter()
        build_scene(scene, args.size)
        print(
            f"built {scene} ({scene.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - t0:.0f} s"
        )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child_args = dict(vars(args), scene=str(scene), out=str(work / f"out_{args.size}"))
    proc = ctx.Process(target=_child, args=(child_args, q))
    proc.start()
    r = q.get()
    proc.join()
    model_only = r["per_tile"] * r["tiles"]
    mpx = args.size**2 / 1e6
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"torch threads {r['threads']}, load {r['load'][0][0]:.2f} -> {r['load'][1][0]:.2f}"
    )
    print(
        f"scene {args.size}² px ({mpx:.0f} Mpx), 4-band uint16, tiles {args.tile} px "
        f"overlap {args.overlap}: {r['tiles']} predicted, {r['empty']} all-nodata skipped; "
        f"TTA {args.tta}, {args.device}, threads {'on' if args.threads else 'off'}"
        + (", rectify" if args.rectify else "")
    )
    print(f"peak RSS {r['rss_gib']:.2f} GiB (target <= 4 GB)")
    print(
        f"wall {r['wall']:.0f} s; model alone on the same tiles {model_only:.0f} s "
        f"({r['per_tile']:.2f} s/tile: {r['per_tile_range'][0]:.2f} before the run, "
        f"{r['per_tile_range'][1]:.2f} after); wall/model {r['wall'] / model_only:.2f}× "
        "(target <= 1.3×)"
        f"; time inside the model during the run {r['model_in_run']:.0f} s"
    )
    cpu_model = r["cpu_tile"] * r["tiles"]
    print(
        f"CPU (all threads) {r['cpu']:.0f} s; model alone {cpu_model:.0f} s "
        f"({r['cpu_tile']:.2f} s/tile); CPU/model {r['cpu'] / cpu_model:.2f}× "
        "(the I/O's own work, whatever the load)"
    )
    print(
        f"pose: angle {math.degrees(r['angle']):.1f}°, scale {r['scale']:.3f} px/m"
        f"{'' if r['known'] else ' (no direction evidence: zero flow)'}"
    )
    print("COG: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["cog"].items()))
    print("sizes MiB: " + json.dumps({k: round(v / 2**20, 1) for k, v in r["sizes"].items()}))


if __name__ == "__main__":
    main()
