r"""GPU benchmark: training throughput, inference speed, bf16 numerics and DDP, in one
command that fits 8 minutes on one H100, printing one table and writing JSON.

    python benchmarks/bench_gpu.py --device cuda --json bench_gpu.json     # on the GPU, < 8 min
    python benchmarks/bench_gpu.py --device cpu --tiny --json tiny.json    # CI: seconds, on CPU

Sections, each run in its own Python process under its own time box (``--budget-s``; the
process is killed ``GRACE_S`` after it, and what it had measured is kept), in this order:

- ``data``: a synthetic data set of ``--tiny`` 128² / full 2048² tiles
  (``geopose.synth.write_dataset``, JPEG 2000 like the competition) and its ``geopose prepare``
  cache (``geopose.data.prepare_cache``, train split).
- ``train``: images/s and peak GPU memory of forward + loss + backward + gradient clipping +
  AdamW (what ``geopose train`` runs per step) for ``bloodaxe_b7`` at 512² and ``selim`` at
  896², in fp32 (TF32 convolutions, as ``geopose train`` sets on a GPU), bf16-mixed and
  bf16-mixed + channels_last, on a real batch from the cache (no augmentation) kept on the
  device; the real data pipeline (``GeoposeDataModule`` on the cache, the recipe's
  augmentation, 4 then 8 workers) feeding the bloodaxe_b7 step: loader wait per step (timing
  ``next(iter)``), GPU utilisation (``torch.cuda.utilization()`` sampled every 0.2 s) and the
  ratio to the in-memory rate; the crops/s of one worker (``bench_train.crops_per_second``);
  the largest bloodaxe_b7 batch that fits (doubling, then bisection, catching CUDA
  out-of-memory errors, cuDNN autotuning off, time-boxed); and, last because it may take
  minutes, bf16-mixed + channels_last + ``torch.compile`` (a failure is reported). In that
  order (bloodaxe_b7 first, selim after the batch search): what overruns the budget loses only
  what comes after it.
- ``infer``: seconds per image of ``Predictor.predict`` (``bench_zoo.seconds``: a random
  uint8 image, a warm-up call, the median of the timed calls) for ``bloodaxe_b7`` with TTA
  ``none`` and ``d4`` (views batched by 8), bf16 and fp32, and for the published family
  ``second_b7_unet`` built from its reference fixture (``bench_zoo.build``); peak GPU memory;
  and the tiled path (``tile_size`` = half the image) against the whole image on a synthetic
  test image (bf16, no TTA; AGL max difference within 2% of the AGL's maximum).
- ``numerics``: ``bloodaxe_b7`` (random weights) predicts the synthetic test set with D4 in
  strict fp32 (no TF32) and in bf16: AGL max / mean absolute difference, angle and scale
  differences, and the competition score of each (``geopose.metrics.evaluate_folders`` on the
  written predictions vs ``test_truth``). A random model's heights are not the data's
  (bloodaxe_b7: ~1.3 m and nearly flat), so both AGL maps are multiplied by one factor that
  makes the fp32 mean equal the truth's mean: the bf16 error is relative, and this puts it in
  metres at real heights.
- ``ddp``: ``python -m torch.distributed.run --standalone --nproc-per-node N -m
  geopose.cli.main train ... train.strategy=ddp`` (DDP also for one process) for a few steps on
  the cache (NCCL on GPUs, gloo on CPU); N = 1, and 2 where there are 2 GPUs (on CPU 1 and 2,
  ``--tiny`` 1); the ranks' weight checksums in ``summary.json`` must be identical.

Targets (one H100) are printed next to the figures and judged only on CUDA without
``--tiny``: inference bloodaxe_b7 D4 2048² bf16 <= 0.5 s/image, no TTA <= 0.1 s; training
bloodaxe_b7 512² bf16-mixed >= 3x fp32 and >= 60 images/s; bf16 changes the AGL by <= 0.05 m
mean absolute and the score by <= 0.002. ``--tiny`` runs the same code paths in seconds:
128² tiles, resnet18 encoders (``model.encoder=resnet18``) instead of B7 / EfficientNetV2-L
with narrower decoders and heads, a 2-step timing, the ``baseline`` published family, gloo,
one thread per process; ~1 minute on 2 CPU cores; its figures are not benchmarks.
Models are randomly initialised (``model.pretrained=false``: no weights are downloaded);
speed does not depend on the weights.

It runs geopose from ``src`` (``PYTHONPATH``, no install needed) and needs geopose's
dependencies (PyTorch, timm, Lightning, albumentations, segmentation-models-pytorch,
imagecodecs, ...) but no network. The default section budgets (data 30 s, train 190, infer 70,
numerics 60, ddp 65: 415 s, + 5 s grace per section at worst) keep the whole run under
8 minutes. A section that failed can be rerun alone, e.g. ``--sections data ddp`` (``data`` is
needed by ``train``, ``numerics`` and ``ddp``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTIONS = ("data", "train", "infer", "numerics", "ddp")
GRACE_S = 5.0
"""A section's process is killed this long after its budget (it plans to end within it)."""

FULL = {
    "size": 2048,  # synthetic tiles, px
    "n_train": 8,
    "n_test": 4,
    "workers": 8,  # synth / prepare processes
    "overrides": [],  # model overrides of every recipe
    "train": [("bloodaxe_b7", 512, 8), ("selim", 896, 4)],  # recipe, crop, batch
    "warmup": 3,
    "timing": (5, 40, 4.0),  # min steps, max steps, seconds
    "loader_workers": (4, 8),
    "loader_steps": 30,
    "worker_crops": 16,
    "batch_cap": 512,
    "search_s": 40.0,
    "compile_need_s": 60.0,
    "infer_size": 2048,
    "infer_batch": 8,
    "repeats": 3,
    "zoo": "second_b7_unet",
    "zoo_rows": (("none", True), ("d4", True), ("none", False)),  # (TTA, bf16)
    "numerics_tta": "d4",
    "ddp": {"crop": 512, "batch": 4, "steps": 5, "workers": 4, "need_s": 40.0},
    "need_s": 8.0,  # default time one measurement needs
    "budgets": {"data": 30, "train": 190, "infer": 70, "numerics": 60, "ddp": 65},
}
TINY = {
    "size": 128,
    "n_train": 4,
    "n_test": 2,
    "workers": 1,
    # resnet18, and cpu_small's decoder and head widths: the recipes' full-resolution
    # 64-channel heads cost ~1 s per 8 × 128² on 2 CPU cores
    "overrides": [
        "model.encoder=resnet18",
        "model.decoder.channels=[128,64,32,16]",
        "model.agl.channels=16",
        "model.mag.channels=16",
    ],
    "train": [("bloodaxe_b7", 64, 2), ("selim", 64, 2)],
    "warmup": 1,
    "timing": (2, 2, 0.0),
    "loader_workers": (1,),
    "loader_steps": 2,
    "worker_crops": 2,
    "batch_cap": 4,
    "search_s": 5.0,
    "compile_need_s": 1.0,
    "infer_size": 128,
    "infer_batch": 8,
    "repeats": 0,  # one cold call
    "zoo": "baseline",
    "zoo_rows": (("none", True), ("none", False)),
    "numerics_tta": "none",  # d4 runs in the infer section
    "ddp": {"crop": 64, "batch": 2, "steps": 2, "workers": 0, "need_s": 8.0},
    "need_s": 0.5,
    # caps, not estimates: ~45-60 s in all on 2 idle cores, 2-3x that when the box is shared
    "budgets": {"data": 60, "train": 120, "infer": 90, "numerics": 60, "ddp": 90},
}

TARGETS = {
    "infer_none": ("<=", 0.1),
    "infer_d4": ("<=", 0.5),
    "train_ips": (">=", 60.0),
    "train_speedup": (">=", 3.0),
    "agl_mean_diff": ("<=", 0.05),
    "score_diff": ("<=", 0.002),
    "tile_rel_diff": ("<=", 0.02),
    "loader_ratio": (">=", 0.9),
    "checksum_diff": ("<=", 0.0),
}


# --- one section, in its own process ----------------------------------------------------------


def short(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Section:
    """A section's clock (its budget counts from its process start) and its rows (JSON lines
    appended to ``WORK/NAME.jsonl`` as they are measured, so a killed section keeps them)."""

    def __init__(self, name: str, ctx: dict) -> None:
        self.t0 = time.monotonic()
        self.name, self.ctx = name, ctx
        self.p = TINY if ctx["tiny"] else FULL
        self.budget = float(ctx["budgets"][name])
        self.judge = ctx["device"] == "cuda" and not ctx["tiny"]
        self.rows_path = Path(ctx["work"]) / f"{name}.jsonl"
        self.rows_path.unlink(missing_ok=True)
        self.device = ctx["device"]

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def _write(self, obj: dict) -> None:
        with open(self.rows_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")

    def emit(
        self,
        name: str,
        value: float | None = None,
        unit: str = "",
        target: str | None = None,
        note: str = "",
        skip: str | None = None,
        error: str | None = None,
        **extra,
    ) -> None:
        """One measured figure (``value``), or an explained ``skip``, or an ``error``.

        ``target``: a key of :data:`TARGETS`; judged (``met``) only on CUDA without --tiny.
        """
        met, tgt = None, None
        if target is not None:
            op, ref = TARGETS[target]
            tgt = f"{'≤' if op == '<=' else '≥'} {ref:g}"
            if self.judge and value is not None and math.isfinite(value):
                met = bool(value <= ref if op == "<=" else value >= ref)
        if value is not None and not math.isfinite(value):
            value, note = None, (note + "; " if note else "") + "not finite"
            error = error or "not a finite number"
        row = {"name": name, "value": value, "unit": unit, "target": tgt, "met": met}
        row.update(note=note, skip=skip, error=error, **extra)
        self._write(row)
        shown = skip or error or f"{value:.4g} {unit}"
        print(
            f"[{self.name} {time.monotonic() - self.t0:6.1f} s] {name}: {shown} {note}", flush=True
        )

    def step(self, label: str, fn, need: float | None = None):
        """Run ``fn()`` (it emits its rows) unless fewer than ``need`` seconds are left (then a
        skip row; ``need`` 0: always run); an exception becomes an error row under ``label``
        and the section goes on."""
        need = self.p["need_s"] if need is None else need
        if need > 0 and self.left() < need:  # need 0: run whatever is left
            self.emit(label, skip=f"section budget: {self.left():.0f} s left, needs ~{need:.0f} s")
            return None
        self._write({"begin": label})
        try:
            return fn()
        except Exception as exc:
            traceback.print_exc()
            self.emit(label, error=short(exc))
            return None
        finally:
            self._write({"end": label})
            with contextlib.suppress(Exception):  # a broken CUDA context fails the next step
                free(self.cuda)


def free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(cuda: bool) -> float | None:
    if not cuda:
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def meta(device: str) -> dict:
    import platform

    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "device": device,
        "load": round(os.getloadavg()[0], 2),
    }
    if device == "cuda":
        out.update(
            gpu=torch.cuda.get_device_name(0),
            gpus=torch.cuda.device_count(),
            gpu_mem_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return out


def recipe_config(s: Section, recipe: str, *extra: str) -> dict:
    from geopose.config import resolve_config

    return resolve_config(recipe, ["model.pretrained=false", *s.p["overrides"], *extra])


def label(s: Section, recipe: str) -> str:
    enc = [o.split("=", 1)[1] for o in s.p["overrides"] if o.startswith("model.encoder=")]
    return f"{recipe}[{enc[0]}]" if enc else recipe


# --- data -------------------------------------------------------------------------------------


def section_data(s: Section) -> None:
    data, cache = Path(s.ctx["data"]), Path(s.ctx["cache"])
    p = s.p
    n = p["n_train"] + p["n_test"]

    def synth() -> None:
        from geopose.synth import write_dataset

        t0 = time.perf_counter()
        write_dataset(
            data, p["n_train"], p["n_test"], p["size"], 0, workers=p["workers"], overwrite=True
        )
        dt = time.perf_counter() - t0
        s.emit(
            f"synthetic set, {p['n_train']} train + {p['n_test']} test of {p['size']}²",
            dt / n,
            "s/image",
            note=f"{dt:.1f} s wall, {p['workers']} process(es)",
        )

    def prepare() -> None:
        from geopose.data import prepare_cache

        t0 = time.perf_counter()
        prepare_cache(data, cache, split="train", workers=p["workers"], overwrite=True)
        dt = time.perf_counter() - t0
        mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
        s.emit("geopose prepare (train split)", dt / p["n_train"], "s/image", note=f"{mb:.0f} MB")

    s.step("synthetic set", synth, need=0)
    s.step("geopose prepare", prepare, need=0)


# --- train ------------------------------------------------------------------------------------


def data_module(s: Section, cfg: dict):
    """A ``GeoposeDataModule`` on the cache, set up outside a Trainer (rank 0 of 1)."""
    from geopose.training.datamodule import GeoposeDataModule

    dm = GeoposeDataModule(cfg, Path(s.ctx["work"]) / "dm")
    dm.prepare(write=False, fresh=True)
    return dm


def to_device(batch: dict, device, channels_last: bool = False) -> dict:
    import torch

    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "stem"}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def cache_batch(s: Section, recipe: str, crop: int, batch: int) -> dict:
    """One real training batch from the cache (no augmentation), on the device."""
    cfg = recipe_config(s, recipe, *loader_overrides(s, crop, batch, 0), "data.aug=none")
    b = next(iter(data_module(s, cfg).train_dataloader()))
    return to_device(b, s.device)


def loader_overrides(s: Section, crop: int, batch: int, workers: int) -> list[str]:
    return [
        f"data.root={s.ctx['cache']}",
        "data.fold=null",
        f"data.crop={crop}",
        f"data.batch_size={batch}",
        f"data.workers={workers}",
        "data.samples_per_epoch=100000",
        "data.folds=2",  # the folds are made even with data.fold=null; --tiny has 4 images
    ]


class Models:
    """One model per recipe, built once (speed does not depend on the weights); the one asked
    for is on the device, the others wait on the CPU (so peak memory is one model's)."""

    def __init__(self, s: Section) -> None:
        self.s, self.models, self.configs = s, {}, {}

    def get(self, recipe: str, channels_last: bool):
        import torch

        from geopose.models import create_model

        if recipe not in self.models:
            torch.manual_seed(0)
            self.configs[recipe] = recipe_config(self.s, recipe)
            self.models[recipe] = create_model(self.configs[recipe]).train()
        for name, m in self.models.items():
            if name != recipe:
                m.to("cpu")
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return self.models[recipe].to(self.s.device).to(memory_format=fmt)


class Trainer:
    """A model + its recipe's loss + AdamW; ``step(batch)`` = one training step as ``geopose
    train`` runs it (autocast over forward and loss, backward, clip to norm 1, AdamW)."""

    def __init__(self, s: Section, models: Models, recipe: str, bf16: bool, cl: bool, compile_):
        import torch

        from geopose.models import GeoposeLoss

        self.device = torch.device(s.device)
        self.model = models.get(recipe, cl)
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.loss = GeoposeLoss(models.configs[recipe]["loss"])
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # fused, as geopose train runs it (GeoposeTask.configure_optimizers)
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-2, fused=True)
        self.bf16, self.channels_last = bf16, cl

    def step(self, b: dict) -> None:
        import torch

        self.opt.zero_grad(set_to_none=True)
        image = b["image"]
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.forward(image, b["gsd"], b["city"])
            total, _ = self.loss(out, b)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()

    def close(self) -> None:
        """Drop the optimizer state and gradients (the model stays)."""
        self.opt.zero_grad(set_to_none=True)
        self.opt = None


def timed(s: Section, fn) -> tuple[float, int, float]:
    """(seconds per call, calls timed, warm-up seconds): ``warmup`` calls, then at least
    ``min`` and at most ``max`` calls, stopping after ``seconds`` (or near the budget)."""
    lo, hi, seconds = s.p["timing"]
    t0 = time.perf_counter()
    for _ in range(s.p["warmup"]):
        fn()
    sync(s.cuda)
    warm = time.perf_counter() - t0
    seconds = min(seconds, max(0.0, s.left() - 10.0))
    n, t0 = 0, time.perf_counter()
    while n < lo or (n < hi and time.perf_counter() - t0 < seconds):
        fn()
        n += 1
    sync(s.cuda)
    return (time.perf_counter() - t0) / n, n, warm


class UtilSampler:
    """Mean GPU utilisation (``torch.cuda.utilization()``, %) sampled every 0.2 s in a thread."""

    def __init__(self, cuda: bool) -> None:
        self.samples: list[int] = []
        self.error: str | None = None if cuda else "no CUDA: GPU utilisation n/a"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append(int(torch.cuda.utilization()))
            except Exception as exc:  # no pynvml, NVML refused: say so
                self.error = f"torch.cuda.utilization() unavailable ({short(exc)})"
                return
            self._stop.wait(0.2)

    def __enter__(self) -> UtilSampler:
        if self.error is None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def section_train(s: Section) -> None:
    import torch

    if s.cuda:  # as geopose train sets them on a GPU
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    p = s.p
    variants = (
        ("fp32", False, False),
        ("bf16-mixed", True, False),
        ("bf16-mixed + channels_last", True, True),
    )
    rates: dict[tuple[str, str], float] = {}
    models = Models(s)
    batches: dict[str, dict] = {}
    first, crop, batch = p["train"][0]

    def get_batch(recipe: str, crop: int, batch: int) -> dict:
        if recipe not in batches:
            batches[recipe] = cache_batch(s, recipe, crop, batch)
        return batches[recipe]

    def throughput(recipe: str, crop: int, batch: int, variant: str, bf16: bool, cl: bool):
        def run() -> None:
            b = get_batch(recipe, crop, batch)
            free(s.cuda)
            tr = Trainer(s, models, recipe, bf16, cl, False)
            per_step, n, _ = timed(s, lambda: tr.step(b))
            tr.close()
            ips = batch / per_step
            rates[recipe, variant] = ips
            peak = peak_gib(s.cuda)
            main = recipe == first and bf16
            s.emit(
                f"{label(s, recipe)} {crop}² b{batch} {variant}",
                ips,
                "img/s",
                target="train_ips" if main else None,
                note=f"{n} steps" + (f", peak {peak:.1f} GiB" if peak is not None else ""),
                peak_gib=peak,
            )
            if bf16 and (recipe, "fp32") in rates:
                s.emit(
                    f"{label(s, recipe)} {variant} / fp32",
                    ips / rates[recipe, "fp32"],
                    "x",
                    target="train_speedup" if recipe == first else None,
                )

        return run

    def variants_of(recipe: str, crop: int, batch: int) -> None:
        for variant, bf16, cl in variants:
            name = f"{label(s, recipe)} {crop}² b{batch} {variant}"
            s.step(name, throughput(recipe, crop, batch, variant, bf16, cl))

    def loader(w: int) -> None:
        s.step(
            f"loader, {w} worker(s)",
            lambda: loader_fed(s, models, first, crop, batch, w, rates),
        )

    # In order of importance: a measurement that overruns the budget loses the ones after it.
    variants_of(first, crop, batch)
    loader(p["loader_workers"][0])
    s.step(f"crops/s per worker ({first})", lambda: worker_rate(s, first, crop))
    s.step(
        f"largest batch {label(s, first)} {crop}²",
        lambda: largest_batch(s, models, first, get_batch(first, crop, batch)),
        need=min(p["search_s"], 10.0),
    )
    for recipe, rcrop, rbatch in p["train"][1:]:
        variants_of(recipe, rcrop, rbatch)
    for w in p["loader_workers"][1:]:
        loader(w)
    name = f"{label(s, first)} {crop}² b{batch} bf16-mixed + channels_last + compile"
    if not s.cuda:
        s.emit(name, skip="no CUDA: compile skipped (inductor on CPU is not what is measured)")
        return

    def compiled() -> None:
        b = get_batch(first, crop, batch)
        tr = Trainer(s, models, first, True, True, True)
        try:
            per_step, n, warm = timed(s, lambda: tr.step(b))
        except Exception as exc:
            traceback.print_exc()
            s.emit(name, skip=f"torch.compile failed: {short(exc)}")
            return
        ips = batch / per_step
        eager = rates.get((first, "bf16-mixed + channels_last"))
        peak = peak_gib(s.cuda)
        note = f"compile + {p['warmup']} warm-up steps {warm:.0f} s, {n} steps, peak {peak:.1f} GiB"
        if eager:
            note += f", {ips / eager:.2f}x eager"
        s.emit(name, ips, "img/s", target="train_ips", note=note, peak_gib=peak)

    s.step(name, compiled, need=p["compile_need_s"])


def loader_fed(
    s: Section, models: Models, recipe: str, crop: int, batch: int, workers: int, rates: dict
) -> None:
    """The real pipeline (cache, the recipe's augmentation, ``workers`` processes) feeding the
    bf16-mixed + channels_last step: loader wait per step, GPU utilisation, images/s."""
    cfg = recipe_config(s, recipe, *loader_overrides(s, crop, batch, workers))
    level = cfg["data"]["aug"]
    loader = data_module(s, cfg).train_dataloader()
    free(s.cuda)
    tr = Trainer(s, models, recipe, True, True, False)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(s.p["warmup"]):
        tr.step(to_device(next(it), s.device))
    sync(s.cuda)
    warm = time.perf_counter() - t0
    steps = s.p["loader_steps"]
    wait, n = 0.0, 0
    with UtilSampler(s.cuda) as util:
        t0 = time.perf_counter()
        while n < steps and (n < 2 or s.left() > 8.0):
            w0 = time.perf_counter()
            b = next(it)
            wait += time.perf_counter() - w0
            tr.step(to_device(b, s.device))
            n += 1
        sync(s.cuda)
        total = time.perf_counter() - t0
    del it, loader
    tr.close()
    ips = n * batch / total
    w = f"{workers} worker{'s' if workers != 1 else ''}"
    s.emit(
        f"loader-fed {label(s, recipe)} {crop}² b{batch} bf16+CL, {w}",
        ips,
        "img/s",
        note=f"{level} augmentation from the cache; {n} steps; the first "
        f"{s.p['warmup']} (workers starting) {warm:.1f} s",
    )
    s.emit(
        f"loader wait per step, {w}",
        1000 * wait / n,
        "ms",
        note=f"{100 * wait / total:.0f}% of the step time",
        wait_share=wait / total,
    )
    mem = rates.get((recipe, "bf16-mixed + channels_last"))
    if mem:
        s.emit(
            f"loader-fed / in-memory batch, {w}",
            ips / mem,
            "x",
            target="loader_ratio",
            note="the loader keeps up when ~1",
        )
    if util.error:
        s.emit(f"GPU utilisation, {w}", skip=util.error)
    elif util.mean is None:
        s.emit(f"GPU utilisation, {w}", skip="no sample taken")
    else:
        s.emit(
            f"GPU utilisation, {w}",
            util.mean,
            "%",
            note=f"mean of {len(util.samples)} samples",
        )


def worker_rate(s: Section, recipe: str, crop: int) -> None:
    """Crops/s one worker makes from the cache at the recipe's augmentation level."""
    from bench_train import crops_per_second

    from geopose.data import CacheSource

    level = recipe_config(s, recipe)["data"]["aug"]
    rate = crops_per_second(CacheSource(s.ctx["cache"]), crop, level, s.p["worker_crops"])
    s.emit(f"{crop}² crops/s per loader worker, {level} aug", rate, "crops/s")


def largest_batch(s: Section, models: Models, recipe: str, base: dict) -> None:
    """The largest batch whose bf16-mixed + channels_last training step fits: doubling from
    the recipe's batch, then bisection, catching CUDA out-of-memory errors; time-boxed."""
    import torch

    p = s.p
    batch, crop = base["image"].shape[0], base["image"].shape[-1]
    torch.backends.cudnn.benchmark = False  # no autotuning per batch size while searching
    free(s.cuda)
    tr = Trainer(s, models, recipe, True, True, False)
    stop = time.monotonic() + min(p["search_s"], max(1.0, s.left() - 15.0))

    def fits(n: int) -> str | None:
        """None when a step at batch ``n`` runs, else why not."""
        reps = -(-n // base["image"].shape[0])
        b = {k: torch.cat([v] * reps)[:n] for k, v in base.items()}
        try:
            tr.step(b)
            sync(s.cuda)
            return None
        except torch.OutOfMemoryError:
            return "OOM"
        except RuntimeError as exc:  # cuDNN allocation failures, 32-bit index limits, ...
            return short(exc)[:80]
        finally:
            del b

    ok, bad, n, tries = 0, None, batch, []
    while time.monotonic() < stop:
        why_not = fits(n)
        good = why_not is None
        tr.opt.zero_grad(set_to_none=True)
        free(s.cuda)
        tries.append((n, why_not))
        if good:
            ok = n
        else:
            bad = n
        if bad is None:
            if n >= p["batch_cap"]:
                break
            n = min(p["batch_cap"], 2 * n)
        elif bad - ok <= 1:
            break
        else:
            n = (ok + bad) // 2
    torch.backends.cudnn.benchmark = s.cuda
    tr.close()
    if ok == 0:
        s.emit(f"largest batch {label(s, recipe)} {crop}²", error=f"nothing fits: {tries}")
        return
    if bad is None:
        why = f"stopped at the cap {p['batch_cap']}" if ok >= p["batch_cap"] else "time box"
        if not s.cuda:
            why += " (CPU: no device memory to fill)"
    else:
        why = "exact" if bad - ok <= 1 else f"time box; {bad} does not fit"
    tried = ", ".join(f"{t}" if w is None else f"{t} ({w})" for t, w in tries)
    s.emit(
        f"largest batch {label(s, recipe)} {crop}² bf16+CL",
        float(ok),
        "images",
        note=f"{why}; tried {tried}",
        tries=tries,
    )


# --- inference --------------------------------------------------------------------------------


def for_predictor(model, device: str, bf16: bool):
    """The model to give a Predictor: on CPU with ``bf16``, wrapped in bf16 autocast (the
    Predictor's own ``amp`` is bf16 autocast on CUDA only)."""
    import torch

    if device != "cpu" or not bf16:
        return model

    class CpuBf16(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, image, gsd, city):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.inner(image, gsd, city)

    return CpuBf16(model)


def synth_test_jobs(s: Section) -> list:
    from geopose.inference import resolve_jobs

    return resolve_jobs(Path(s.ctx["data"]) / "test")


def section_infer(s: Section) -> None:
    import torch
    from bench_zoo import build, seconds

    from geopose.inference import Predictor
    from geopose.models import create_model

    p = s.p
    size = p["infer_size"]
    torch.manual_seed(0)
    recipe = "bloodaxe_b7"
    models = {recipe: create_model(recipe_config(s, recipe)).eval()}
    note_fp32 = "amp off (cuDNN may use TF32, PyTorch's default)" if s.cuda else ""

    def timing(model, name: str, tta: str, bf16: bool, target: str | None) -> None:
        pred = Predictor(
            [for_predictor(model, s.device, bf16)],
            tta=tta,
            device=s.device,
            max_batch=p["infer_batch"],
            tile_size=0,
            amp=bf16,
        )
        free(s.cuda)
        wall, _cpu = seconds(pred, size, p["repeats"], s.cuda)
        peak = peak_gib(s.cuda)
        note = f"median of {p['repeats']} after a warm-up" if p["repeats"] else "one cold call"
        note += f", peak {peak:.2f} GiB" if peak is not None else ""
        if not bf16 and note_fp32:
            note += f"; {note_fp32}"
        if bf16 and not s.cuda:
            note += "; CPU: bf16 autocast around the model"
        s.emit(
            f"{name} {size}² {tta} {'bf16' if bf16 else 'fp32'} (batch {p['infer_batch']})",
            wall,
            "s/image",
            target=target,
            note=note,
            peak_gib=peak,
        )

    for tta, bf16 in (("none", True), ("d4", True), ("none", False), ("d4", False)):
        target = ("infer_none" if tta == "none" else "infer_d4") if bf16 else None
        s.step(
            f"{recipe} {tta} {'bf16' if bf16 else 'fp32'}",
            lambda tta=tta, bf16=bf16, target=target: timing(
                models[recipe], label(s, recipe), tta, bf16, target
            ),
        )
    s.step("tiled vs whole image", lambda: tiled_vs_whole(s, models[recipe]))
    models.clear()
    free(s.cuda)

    def zoo_model():
        if p["zoo"] not in models:
            models[p["zoo"]] = build(p["zoo"])
        return models[p["zoo"]]

    for tta, bf16 in p["zoo_rows"]:
        s.step(
            f"{p['zoo']} {tta} {'bf16' if bf16 else 'fp32'}",
            lambda tta=tta, bf16=bf16: timing(
                zoo_model(), f"published {p['zoo']}", tta, bf16, None
            ),
        )


def tiled_vs_whole(s: Section, model) -> None:
    """bf16, no TTA: ``tile_size`` = half the image side vs the whole image in one piece."""
    import numpy as np

    from geopose.geometry import angle_error_deg
    from geopose.inference import Predictor
    from geopose.io import read_rgb

    try:
        job = synth_test_jobs(s)[0]
        rgb, gsd, city, what = read_rgb(job.path), job.gsd, job.city, f"test image {job.stem}"
    except Exception as exc:
        size = s.p["infer_size"]
        rgb = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
        gsd, city, what = 0.35, 2, f"random image (no test image: {short(exc)})"
    tile = max(rgb.shape[:2]) // 2
    out = {}
    for name, tile_size in (("whole", 0), ("tiled", tile)):
        pred = Predictor(
            [for_predictor(model, s.device, True)],
            tta="none",
            device=s.device,
            max_batch=s.p["infer_batch"],
            tile_size=tile_size,
        )
        out[name] = pred.predict(rgb, gsd, city)
    w, t = out["whole"], out["tiled"]
    d = np.abs(w.agl.astype(np.float64) - t.agl)
    top = float(np.abs(w.agl).max())
    rel = float(d.max()) / top if top > 0 else float(d.max())
    s.emit(
        f"tiled ({tile}) vs whole {rgb.shape[0]}²: AGL max |diff| / max AGL",
        rel,
        "",
        target="tile_rel_diff",
        note=f"max |diff| {d.max():.3g} m, mean {d.mean():.3g} m; whole-image AGL max "
        f"{top:.3g} m, std {w.agl.std():.3g} m (random weights); {what}; bf16, no TTA",
        agl_max_abs_m=float(d.max()),
        agl_mean_abs_m=float(d.mean()),
    )
    s.emit(
        f"tiled ({tile}) vs whole: angle difference",
        float(angle_error_deg(w.angle, t.angle)),
        "deg",
        note=f"scale {t.scale:.4g} vs {w.scale:.4g} px/m (tiles: weighted means)",
    )


# --- numerics ---------------------------------------------------------------------------------


def section_numerics(s: Section) -> None:
    import numpy as np
    import torch

    from geopose.geometry import angle_error_deg
    from geopose.inference import Predictor
    from geopose.io import read_agl, read_rgb, write_prediction
    from geopose.metrics import evaluate_folders
    from geopose.models import create_model

    work, data = Path(s.ctx["work"]), Path(s.ctx["data"])
    tta = s.p["numerics_tta"]
    torch.manual_seed(0)
    model = create_model(recipe_config(s, "bloodaxe_b7")).eval()
    jobs = synth_test_jobs(s)
    preds: dict[str, list] = {"fp32": [], "bf16": []}
    # The reference is strict fp32: no TF32 in convolutions or matrix products.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    seconds = {}

    def predict(kind: str) -> None:
        bf16 = kind == "bf16"
        pred = Predictor(
            [for_predictor(model, s.device, bf16)],
            tta=tta,
            device=s.device,
            max_batch=s.p["infer_batch"],
            amp=bf16,
        )
        t0 = time.perf_counter()
        for job in jobs:
            preds[kind].append(pred.predict(read_rgb(job.path), job.gsd, job.city))
        seconds[kind] = (time.perf_counter() - t0) / len(jobs)

    s.step(f"predict {len(jobs)} test images, fp32, {tta}", lambda: predict("fp32"))
    s.step(f"predict {len(jobs)} test images, bf16, {tta}", lambda: predict("bf16"))
    if len(preds["fp32"]) != len(jobs) or len(preds["bf16"]) != len(jobs):
        s.emit("bf16 vs fp32", skip="predictions missing (see the rows above)")
        return
    truth = data / "test_truth"

    def compare() -> None:
        true_mean = float(
            np.nanmean([np.nanmean(read_agl(truth / f"{j.stem}_AGL.tif")) for j in jobs])
        )
        pred_mean = float(np.mean([p.agl.mean() for p in preds["fp32"]]))
        k = true_mean / pred_mean if pred_mean > 0 else 1.0
        scores, diffs, means, angles, scales = {}, [], [], [], []
        for a, b in zip(preds["fp32"], preds["bf16"], strict=True):
            d = np.abs(a.agl.astype(np.float64) - b.agl) * k
            diffs.append((float(d.max()), float(d.mean())))
            means.append(float(a.agl.mean()) * k)
            angles.append(float(angle_error_deg(a.angle, b.angle)))
            scales.append(abs(b.scale - a.scale) / max(abs(a.scale), 1e-12))
        for kind in ("fp32", "bf16"):
            folder = work / f"pred_{kind}"
            shutil.rmtree(folder, ignore_errors=True)
            for job, pr in zip(jobs, preds[kind], strict=True):
                write_prediction(folder, job.stem, pr.agl * k, pr.angle, pr.scale)
            scores[kind] = evaluate_folders(folder, truth)["final"]
        calib = f"AGL x {k:.3g} (fp32 mean {pred_mean:.3g} m -> truth mean {true_mean:.3g} m)"
        mean_abs = float(np.mean([m for _, m in diffs]))
        s.emit(
            "bf16 vs fp32: AGL mean |diff|",
            mean_abs,
            "m",
            target="agl_mean_diff",
            note=f"{100 * mean_abs / max(np.mean(means), 1e-12):.3f}% of the mean AGL; {calib}",
            calibration=k,
        )
        s.emit("bf16 vs fp32: AGL max |diff|", max(m for m, _ in diffs), "m", note="any pixel")
        s.emit("bf16 vs fp32: angle difference, max over images", max(angles), "deg")
        s.emit("bf16 vs fp32: scale relative difference, max", max(scales), "")
        for kind in ("fp32", "bf16"):
            s.emit(
                f"score {kind} ({len(jobs)} synthetic test images, {tta})",
                scores[kind],
                "",
                note=f"{seconds[kind]:.3g} s/image; random weights, calibrated AGL",
            )
        s.emit(
            "bf16 vs fp32: |score difference|",
            abs(scores["bf16"] - scores["fp32"]),
            "",
            target="score_diff",
        )

    s.step("bf16 vs fp32 comparison", compare)


# --- DDP --------------------------------------------------------------------------------------


def section_ddp(s: Section) -> None:
    import numpy as np

    c = s.p["ddp"]
    if s.cuda:
        import torch

        nprocs = [1, 2] if torch.cuda.device_count() >= 2 else [1]
        backend = "NCCL"
        if len(nprocs) == 1:
            s.emit("DDP 2 processes, NCCL", skip="one GPU: the 2-process run needs 2 GPUs")
    else:  # --tiny keeps to the 1-process run (tests/training/test_training.py runs 2 with gloo)
        nprocs, backend = ([1] if s.ctx["tiny"] else [1, 2]), "gloo"

    def run(n: int) -> None:
        out = Path(s.ctx["work"]) / f"ddp{n}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(n),
            "-m",
            "geopose.cli.main",
            "train",
            "--config",
            "bloodaxe_b7",
            "--data",
            s.ctx["cache"],
            "--out",
            str(out),
            "model.pretrained=false",
            *s.p["overrides"],
            *loader_overrides(s, c["crop"], c["batch"], c["workers"])[1:],
            f"train.max_steps={c['steps']}",
            "train.progress=false",
            "train.strategy=ddp",  # also for 1 process (else Lightning runs it without DDP)
            f"train.accelerator={'gpu' if s.cuda else 'cpu'}",
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if not s.cuda:
            env["OMP_NUM_THREADS"] = "1"
        t0 = time.perf_counter()
        rc, tail = run_group(cmd, env, max(5.0, s.left() - 2.0), log=out.with_suffix(".log"))
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"torchrun exit {rc}: {first_error(tail)}")
        summary = json.loads((out / "summary.json").read_text())
        sums = np.array(summary["rank_checksums"], dtype=np.float64)
        spread = float(np.abs(sums - sums[0]).max()) if sums.size else float("nan")
        s.emit(
            f"DDP {n} process(es), {backend}: rank checksum spread",
            spread,
            "",
            target="checksum_diff",
            note=f"world {summary['world_size']}, {summary['global_step']} steps, "
            f"{summary['seconds']:.1f} s training, {dt:.1f} s with start-up; "
            f"{label(s, 'bloodaxe_b7')} {c['crop']}² b{c['batch']}",
            world_size=summary["world_size"],
            global_step=summary["global_step"],
            rank_checksums=summary["rank_checksums"],
        )

    for n in nprocs:
        s.step(f"DDP {n} process(es), {backend}", lambda n=n: run(n), need=c["need_s"])


def first_error(text: str) -> str:
    """The first error line of a failed run's output (geopose's ``error: ...``, else a Python
    exception line other than torchrun's own), else its last 300 characters."""
    import re

    for line in text.splitlines():
        line = line.strip()
        if line.startswith("error:") or (
            re.match(r"^[\w.]*(Error|Exception)\b: ", line) and "ChildFailedError" not in line
        ):
            return line[:300]
    return text[-300:]


def run_group(cmd: list[str], env: dict, timeout: float, log: Path | None = None):
    """Run ``cmd`` in its own process group (killed whole at ``timeout``): (exit code, the last
    20000 characters of its output; -9 when it was killed)."""
    with tempfile.TemporaryFile("w+") if log is None else open(log, "w+") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        rc = None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if rc is None:  # timed out, or this process is being stopped: end the whole group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        f.seek(0)
        text = f.read()
    if rc is None:
        return -9, f"killed after {timeout:.0f} s: " + text[-20000:]
    return rc, text[-20000:]


SECTION_FNS = {
    "data": section_data,
    "train": section_train,
    "infer": section_infer,
    "numerics": section_numerics,
    "ddp": section_ddp,
}


def section_main(name: str, ctx_path: str) -> int:
    ctx = json.loads(Path(ctx_path).read_text())
    s = Section(name, ctx)
    sys.path.insert(0, str(HERE))  # bench_train, bench_zoo
    try:
        if ctx["meta_from"] == name:
            s._write({"meta": meta(s.device)})
        SECTION_FNS[name](s)
    except Exception as exc:
        traceback.print_exc()
        s._write({"fatal": short(exc)})
        return 1
    return 0


# --- the driver -------------------------------------------------------------------------------


def read_rows(path: Path) -> tuple[list[dict], dict, str | None, list[str]]:
    """(rows, meta, fatal error, labels begun and not ended) of a section's JSON lines."""
    rows, info, fatal, open_ = [], {}, None, []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if "meta" in obj:
                info = obj["meta"]
            elif "fatal" in obj:
                fatal = obj["fatal"]
            elif "begin" in obj:
                open_.append(obj["begin"])
            elif "end" in obj:
                with contextlib.suppress(ValueError):
                    open_.remove(obj["end"])
            else:
                rows.append(obj)
    return rows, info, fatal, open_


def run_section(name: str, ctx: dict, ctx_path: Path, out: dict) -> dict:
    """Run one section in its own process group under its budget; put what it measured (also
    when it failed, was killed at its budget, or this process is being stopped) in
    ``out[name]`` and return it."""
    budget = float(ctx["budgets"][name])
    work = Path(ctx["work"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ctx["tiny"] and ctx["device"] == "cpu":
        # one thread per process: on a shared 2-core box two intra-op threads spin against the
        # other jobs and the tiny run takes ~1.6x as long
        env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_section",
        name,
        "--_ctx",
        str(ctx_path),
    ]
    log = work / f"{name}.log"
    t0 = time.perf_counter()
    rc, tail, stopped = None, "", None
    try:
        rc, tail = run_group(cmd, env, budget + GRACE_S, log=log)
    except BaseException as exc:  # SIGTERM (from `timeout`) or Ctrl-C: the group is ended
        stopped = exc
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace")[-20000:]
    seconds = time.perf_counter() - t0
    rows, info, fatal, open_ = read_rows(work / f"{name}.jsonl")
    if stopped is not None:
        status, error = "stopped", f"the benchmark was stopped ({type(stopped).__name__})"
        rows += [{"name": lbl, "value": None, "skip": f"{error} while running"} for lbl in open_]
    elif rc == -9:
        status, error = "timeout", f"killed at its budget ({budget:.0f} s + {GRACE_S:.0f} s)"
        rows += [{"name": lbl, "value": None, "skip": f"{error} while running"} for lbl in open_]
    elif rc != 0:
        status, error = "error", fatal or f"exit code {rc}: {first_error(tail)}"
        rows += [{"name": lbl, "value": None, "error": f"section died: {error}"} for lbl in open_]
    else:
        status, error = "ok", None
    out[name] = {
        "status": status,
        "seconds": round(seconds, 2),
        "budget_s": budget,
        "error": error,
        "meta": info,
        "rows": rows,
        "log_tail": tail[-3000:] if status != "ok" else tail[-800:],
    }
    if stopped is not None:
        raise stopped
    return out[name]


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def table(result: dict) -> str:
    lines = [
        f"{'section':<9} {'measurement':<72} {'value':>10} {'unit':<8} {'target':<9} "
        f"{'met':<4} note",
        "-" * 150,
    ]
    for name, sec in result["sections"].items():
        head = f"{sec['status']}, {sec['seconds']:.0f} s of {sec['budget_s']:.0f} s"
        if sec["error"]:
            head += f": {sec['error']}"
        lines.append(f"{name:<9} [{head}]")
        for r in sec["rows"]:
            met = {True: "yes", False: "NO", None: ""}[r.get("met")]
            note = r.get("skip") or (f"ERROR {r['error']}" if r.get("error") else r.get("note", ""))
            lines.append(
                f"{'':<9} {r['name'][:72]:<72} {fmt(r.get('value')):>10} {r.get('unit', ''):<8} "
                f"{r.get('target') or '':<9} {met:<4} {note}"
            )
    return "\n".join(lines)


def parse_budgets(items: list[str] | None, tiny: bool) -> dict[str, float]:
    budgets = dict((TINY if tiny else FULL)["budgets"])
    for item in items or []:
        if "=" in item:
            key, val = item.split("=", 1)
            if key not in SECTIONS:
                raise SystemExit(f"--budget-s: unknown section {key!r} (one of {SECTIONS})")
            budgets[key] = float(val)
        else:
            budgets = dict.fromkeys(SECTIONS, float(item))
    return budgets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: the code paths in seconds")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument(
        "--budget-s",
        nargs="+",
        metavar="S|SECTION=S",
        help="seconds per section: one number for every section and/or SECTION=S "
        f"(defaults: full {FULL['budgets']}, tiny {TINY['budgets']})",
    )
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--_section", help=argparse.SUPPRESS)
    ap.add_argument("--_ctx", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._section:
        return section_main(args._section, args._ctx)
    # `timeout` sends SIGTERM: end the running section's process group, then write the results.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    budgets = parse_budgets(args.budget_s, args.tiny)
    sections = [n for n in SECTIONS if n in args.sections]
    worst = sum(budgets[n] + GRACE_S for n in sections)
    print(
        f"bench_gpu: device {device}{', tiny' if args.tiny else ''}; sections {sections}; "
        f"budgets {budgets} (at most {worst:.0f} s)",
        flush=True,
    )
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_gpu_")
        work = Path(tmp.name)
    else:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    ctx = {
        "device": device,
        "tiny": args.tiny,
        "budgets": budgets,
        "work": str(work),
        "data": str(work / "data"),
        "cache": str(work / "cache"),
        "meta_from": sections[0] if sections else None,  # the section that reports the machine
    }
    ctx_path = work / "ctx.json"
    ctx_path.write_text(json.dumps(ctx))
    t0 = time.perf_counter()
    result = {"device": device, "tiny": args.tiny, "budgets": budgets, "meta": None}
    result["sections"] = {}
    try:
        for name in sections:
            sec = run_section(name, ctx, ctx_path, result["sections"])
            print(
                f"== {name}: {sec['status']} in {sec['seconds']:.1f} s"
                + (f" ({sec['error']})" if sec["error"] else ""),
                flush=True,
            )
    finally:
        result["total_s"] = round(time.perf_counter() - t0, 2)
        for sec in result["sections"].values():
            result["meta"] = result["meta"] or sec["meta"] or None
        print()
        print(table(result))
        print(f"\ntotal {result['total_s']:.1f} s; machine {result.get('meta')}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
            print(f"wrote {args.json}")
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
