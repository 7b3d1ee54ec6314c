"""The competition score: hand-computed cases, an independent all-at-once numpy reference,
streaming == all-at-once, file units, and the torchmetrics Metric (also under 2-process DDP)."""

from __future__ import annotations

import datetime
import math

import numpy as np
import pytest
from helpers.scoring import reference_score

from geopose.io import agl_m_to_cm
from geopose.metrics import FIELDS, ScoreAccumulator, image_stats
from geopose.metrics import score as score_mod

NAN = np.nan


def one_city(*images) -> dict:
    """compute() of an accumulator holding ``images`` (tuples of update args) for city X."""
    acc = ScoreAccumulator()
    for img in images:
        acc.update("X", *img)
    return acc.compute()["cities"]["X"]


# --- hand-computed cases -------------------------------------------------------------------


def test_hand_computed_pooled_components():
    """t = 1, 2, 3 (one NaN), p = 1, 2, 4; angle 0 (flow = (0, s·agl)), s = 2.

    AGL: mean 2, SST 2, SSE 1 -> 0.5. Flow components pooled into ONE set {0,0,0,2,4,6}: mean 2,
    SST 32, SSE (8-6)² = 4 -> 0.875. (Per-component SSTs would give 0.5 instead.)
    """
    t = np.array([[1, 2], [3, NAN]], np.float32)
    p = np.array([[1, 2], [4, 7]], np.float32)
    m = one_city((p, t, 0.0, 2.0, 0.0, 2.0))
    assert m["r2_agl"] == pytest.approx(0.5, abs=1e-15)
    assert m["r2_vflow"] == pytest.approx(0.875, abs=1e-15)
    assert m["score"] == pytest.approx(0.6875, abs=1e-15)
    assert m["pixels"] == 3 and m["images"] == 1
    assert m["agl_mae"] == pytest.approx(1 / 3)
    assert m["agl_rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["epe"] == pytest.approx(2 / 3)
    assert m["angle_error_deg"] == 0.0 and m["scale_error"] == 0.0


def test_hand_computed_angle_and_scale_errors():
    """Perfect AGL, angle off by 90°: pred flow (s·t, 0), true (0, s·t), EPE = √2·s·t."""
    t = np.array([[1.0, 3.0]], np.float32)
    m = one_city((t, t, math.pi / 2, 2.0, 0.0, 2.0))
    assert m["angle_error_deg"] == pytest.approx(90.0)
    assert m["epe"] == pytest.approx(math.sqrt(2) * 2 * 2.0)  # mean of √2·2·1, √2·2·3
    assert m["r2_agl"] == 1.0
    # true components {0, 0, 2, 6}: mean 2, SST 4+4+0+16 = 24; SSE = 2·(2² + 6²) = 80
    assert m["r2_vflow"] == pytest.approx(1 - 80 / 24)
    # scale error, with a perfect angle: flow y = 3t vs 2t -> SSE = 1 + 9, |Δs| = 1 px/m
    m = one_city((t, t, 0.0, 3.0, 0.0, 2.0))
    assert m["scale_error"] == pytest.approx(1.0)
    assert m["r2_vflow"] == pytest.approx(1 - 10 / 24)


def test_angle_error_wraps_around():
    t = np.ones((2, 2), np.float32)
    m = one_city((t, t, math.radians(359.0), 1.0, math.radians(1.0), 1.0))
    assert m["angle_error_deg"] == pytest.approx(2.0)


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(3)
    acc = ScoreAccumulator()
    for city in ("ARG", "JAX"):
        for _ in range(2):
            t = rng.uniform(0, 40, (9, 7)).astype(np.float32)
            t[rng.random(t.shape) < 0.2] = NAN
            a, s = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 3)
            acc.update(city, t.copy(), t, a, s, a, s)
    res = acc.compute()
    assert res["final"] == 1.0
    for m in res["cities"].values():
        assert m["r2_agl"] == 1.0 and m["r2_vflow"] == 1.0
        assert m["epe"] == 0.0 and m["agl_mae"] == 0.0


def test_all_nan_image_adds_only_its_angle_and_scale_error():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 20, (6, 6)).astype(np.float32)
    p = t + rng.normal(0, 1, t.shape).astype(np.float32)
    empty = np.full((6, 6), NAN, np.float32)
    alone = one_city((p, t, 1.0, 2.0, 1.1, 2.2))
    both = one_city((p, t, 1.0, 2.0, 1.1, 2.2), (p, empty, 0.0, 1.0, 0.5, 1.5))
    for key in ("r2_agl", "r2_vflow", "agl_mae", "agl_rmse", "epe", "pixels"):
        assert both[key] == pytest.approx(alone[key], rel=1e-14), key
    assert both["images"] == 2
    assert both["angle_error_deg"] == pytest.approx((math.degrees(0.1) + math.degrees(0.5)) / 2)
    assert both["scale_error"] == pytest.approx((0.2 + 0.5) / 2)
    # a city of all-NaN images: nothing to explain, nothing wrong -> R² 1 (documented); no MAE
    only = one_city((p, empty, 0.0, 1.0, 0.5, 1.5))
    assert only["r2_agl"] == 1.0 and only["r2_vflow"] == 1.0 and only["pixels"] == 0
    assert math.isnan(only["agl_mae"]) and math.isnan(only["epe"])


def test_constant_truth_sst_zero_rule():
    """SST = 0: R² = 1 if SSE = 0 else 0 (scikit-learn's force_finite rule), never ±inf."""
    t = np.full((4, 5), 7.3, np.float32)
    q = math.pi / 4  # flow x = y: the pooled flow components are constant too (up to 1 ulp)
    perfect = one_city((t.copy(), t, q, 1.0, q, 1.0))
    assert perfect["r2_agl"] == 1.0 and perfect["r2_vflow"] == 1.0
    off = one_city((t + 1.0, t, q, 1.0, q, 1.0))
    assert off["r2_agl"] == 0.0 and off["r2_vflow"] == 0.0
    # at angle 0 the components {0, 7.3 s} are not constant although the AGL is
    skew = one_city((t + 1.0, t, 0.0, 1.0, 0.0, 1.0))
    assert skew["r2_agl"] == 0.0
    assert skew["r2_vflow"] == pytest.approx(1 - 20 * 1.0**2 / (40 * (7.3 / 2) ** 2), rel=1e-6)


def test_nan_prediction_counts_as_ground():
    t = np.array([[5.0, 2.0, NAN]], np.float32)
    p_nan = np.array([[NAN, 2.0, NAN]], np.float32)
    p_zero = np.array([[0.0, 2.0, 9.0]], np.float32)
    a = one_city((p_nan, t, 0.3, 2.0, 0.2, 2.5))
    b = one_city((p_zero, t, 0.3, 2.0, 0.2, 2.5))
    for key in ("r2_agl", "r2_vflow", "agl_mae", "epe"):
        assert a[key] == pytest.approx(b[key], rel=1e-14)
    assert a["pred_nan_pixels"] == 1  # the NaN over missing truth does not count
    assert b["pred_nan_pixels"] == 0


def test_uint16_centimetres_equal_float_metres():
    rng = np.random.default_rng(5)
    t = np.round(rng.uniform(0, 80, (50, 40)), 2).astype(np.float32)
    t[rng.random(t.shape) < 0.1] = NAN
    p = np.round(rng.uniform(0, 80, t.shape), 2).astype(np.float32)
    p[rng.random(t.shape) < 0.05] = NAN
    t_cm, p_cm = agl_m_to_cm(t), agl_m_to_cm(p)
    args = (0.7, 2.1, 0.5, 1.9)
    # the float reference from the exact centimetre values
    t_m = np.where(t_cm == 65535, NAN, t_cm / 100.0)
    p_m = np.where(p_cm == 65535, NAN, p_cm / 100.0)
    ref = image_stats(p_m, t_m, *args)
    for pred, true in ((p_cm, t_cm), (p_cm, t_m), (p_m, t_cm)):
        np.testing.assert_allclose(image_stats(pred, true, *args), ref, rtol=1e-13)


def test_image_stats_rejects_bad_input():
    with pytest.raises(ValueError, match="size mismatch"):
        image_stats(np.zeros((3, 3)), np.zeros((3, 4)), 0, 1, 0, 1)
    with pytest.raises(ValueError, match="uint16 centimetres or float"):
        image_stats(np.zeros((3, 3), np.int32), np.zeros((3, 3)), 0, 1, 0, 1)
    with pytest.raises(ValueError, match="H×W"):
        image_stats(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), 0, 1, 0, 1)


# --- independent all-at-once reference ------------------------------------------------------


def random_images(rng, n=14, cities=("ARG", "ATL", "JAX", "OMA")):
    """(city, pred, truth, angle_p, scale_p, angle_t, scale_t) with varied sizes and NaNs."""
    out = []
    for i in range(n):
        h, w = rng.integers(5, 40, 2)
        t = rng.gamma(1.5, 6.0, (h, w)).astype(np.float32)
        t[rng.random(t.shape) < rng.uniform(0, 0.3)] = NAN
        if i == 3:
            t[:] = NAN  # an all-missing image
        p = (np.nan_to_num(t) * rng.uniform(0.7, 1.2) + rng.normal(0, 2, t.shape)).astype(
            np.float32
        )
        p[rng.random(t.shape) < 0.02] = NAN
        a_t, s_t = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 4)
        a_p, s_p = (a_t + rng.normal(0, 0.3)) % (2 * math.pi), s_t * rng.uniform(0.8, 1.2)
        out.append((cities[i % len(cities)], p, t, a_p, s_p, a_t, s_t))
    return out


def assert_matches_reference(res: dict, ref: dict, tol: float = 1e-9) -> None:
    assert set(res["cities"]) == set(ref)
    for city, r in ref.items():
        for key, value in r.items():
            got = res["cities"][city][key]
            assert got == pytest.approx(value, rel=tol, abs=tol), (city, key)
    assert res["final"] == pytest.approx(np.mean([r["score"] for r in ref.values()]), abs=tol)


def test_agrees_with_all_at_once_numpy_reference():
    images = random_images(np.random.default_rng(11))
    acc = ScoreAccumulator()
    for city, *args in images:
        acc.update(city, *args)
    res = acc.compute()
    assert_matches_reference(res, reference_score(images), tol=1e-9)
    assert -5 < res["final"] < 0.99  # a real, imperfect score, not a degenerate one


def test_agrees_with_sklearn_r2():
    from sklearn.metrics import r2_score

    images = random_images(np.random.default_rng(12), n=4, cities=("JAX",))
    res = ScoreAccumulator()
    for city, *args in images:
        res.update(city, *args)
    ref = reference_score(images)["JAX"]
    t = np.concatenate([img[2][~np.isnan(img[2])] for img in images]).astype(np.float64)
    p = np.concatenate([np.nan_to_num(img[1][~np.isnan(img[2])]) for img in images]).astype(float)
    assert res.compute()["cities"]["JAX"]["r2_agl"] == pytest.approx(r2_score(t, p), abs=1e-9)
    assert ref["r2_agl"] == pytest.approx(r2_score(t, p), abs=1e-12)


def test_streaming_merge_and_chunking_equal_all_at_once(monkeypatch):
    rng = np.random.default_rng(21)
    images = random_images(rng, n=12)
    whole = ScoreAccumulator()
    for city, *args in images:
        whole.update(city, *args)
    # three "workers" in a shuffled order, merged
    parts = [ScoreAccumulator() for _ in range(3)]
    for i in rng.permutation(len(images)):
        city, *args = images[i]
        parts[i % 3].update(city, *args)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for city in whole.stats:
        np.testing.assert_allclose(merged.stats[city], whole.stats[city], rtol=1e-12)
    # tiny chunks (several per image) give the same per-image statistics
    chunked = ScoreAccumulator()
    monkeypatch.setattr(score_mod, "_CHUNK_PIXELS", 37)
    for city, *args in images:
        chunked.update(city, *args)
    for city in whole.stats:
        np.testing.assert_allclose(chunked.stats[city], whole.stats[city], rtol=1e-12)
    assert_matches_reference(chunked.compute(), reference_score(images))


def test_accumulator_add_checks_length_and_from_dict():
    acc = ScoreAccumulator()
    with pytest.raises(ValueError):
        acc.add("X", np.zeros(3))
    s = image_stats(np.ones((2, 2)), np.full((2, 2), 2.0), 0, 1, 0, 1)
    again = ScoreAccumulator.from_dict({"X": s})
    assert again.compute()["cities"]["X"]["agl_mae"] == 1.0
    assert len(s) == len(FIELDS)


# --- torchmetrics Metric ---------------------------------------------------------------------


def _batch(rng, b=6, h=12, w=10):
    """Model-output-like tensors (float32) and the truth batch (city indices, -1 = unknown)."""
    import torch

    t = rng.gamma(1.5, 6.0, (b, 1, h, w)).astype(np.float32)
    t[rng.random(t.shape) < 0.15] = NAN
    p = (np.nan_to_num(t) + rng.normal(0, 2, t.shape)).astype(np.float32)
    p[rng.random(t.shape) < 0.03] = NAN
    a_t, a_p = rng.uniform(0, 2 * math.pi, b), rng.uniform(0, 2 * math.pi, b)
    s_t, s_p = rng.uniform(0.5, 3, b), rng.uniform(0.5, 3, b)
    city = rng.integers(-1, 4, b)
    vec = np.stack([np.sin(a_p), np.cos(a_p)], 1) * rng.uniform(0.5, 2, (b, 1))  # not unit
    tensors = {
        "agl_pred": torch.tensor(p),
        "direction_pred": torch.tensor(vec, dtype=torch.float32),
        "scale_pred": torch.tensor(s_p, dtype=torch.float32),
        "agl": torch.tensor(t),
        "direction": torch.tensor(np.stack([np.sin(a_t), np.cos(a_t)], 1), dtype=torch.float32),
        "scale": torch.tensor(s_t, dtype=torch.float32),
        "city": torch.tensor(city),
    }
    return tensors


def _accumulate_numpy(batches) -> ScoreAccumulator:
    """The same images through ScoreAccumulator (values as the float32 tensors hold them)."""
    from geopose.io import CITIES

    acc = ScoreAccumulator()
    for bt in batches:
        d_p = bt["direction_pred"].double().numpy()
        d_t = bt["direction"].double().numpy()
        for i in range(bt["agl"].shape[0]):
            c = int(bt["city"][i])
            acc.update(
                CITIES[c] if c >= 0 else "UNK",
                bt["agl_pred"][i, 0].numpy(),
                bt["agl"][i, 0].numpy(),
                math.atan2(d_p[i, 0], d_p[i, 1]),
                float(bt["scale_pred"][i]),
                math.atan2(d_t[i, 0], d_t[i, 1]),
                float(bt["scale"][i]),
            )
    return acc


def test_torchmetric_equals_accumulator():
    import torch

    from geopose.metrics import GeoposeScore

    rng = np.random.default_rng(7)
    batches = [_batch(rng) for _ in range(3)]
    metric = GeoposeScore()
    for bt in batches:
        metric.update(**bt)
    flat = metric.compute()
    expect = _accumulate_numpy(batches).compute()
    assert set(metric.report["cities"]) == set(expect["cities"])
    for city, m in expect["cities"].items():
        for key, value in m.items():
            assert metric.report["cities"][city][key] == pytest.approx(value, rel=1e-9, abs=1e-9)
    assert float(flat["score"]) == pytest.approx(expect["final"], abs=1e-12)
    assert flat["score"].dtype == torch.float64
    # angles instead of direction vectors, B×H×W maps instead of B×1×H×W: same numbers
    other = GeoposeScore()
    for bt in batches:
        angle_p = torch.atan2(bt["direction_pred"][:, 0], bt["direction_pred"][:, 1])
        other.update(
            bt["agl_pred"][:, 0], angle_p, bt["scale_pred"], bt["agl"][:, 0],
            torch.atan2(bt["direction"][:, 0], bt["direction"][:, 1]), bt["scale"], bt["city"],
        )  # fmt: skip
    assert float(other.compute()["score"]) == pytest.approx(expect["final"], abs=1e-6)
    metric.reset()
    assert float(metric.stats.abs().sum()) == 0.0


def test_torchmetric_update_batch_and_perfect_score():
    from types import SimpleNamespace

    import torch

    from geopose.metrics import GeoposeScore

    bt = _batch(np.random.default_rng(8))
    out = SimpleNamespace(agl=bt["agl"].clone(), direction=bt["direction"], scale=bt["scale"])
    metric = GeoposeScore()
    metric.update_batch(out, bt)
    flat = metric.compute()
    assert float(flat["score"]) == pytest.approx(1.0, abs=1e-12)
    assert float(flat["epe"]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        metric.update(torch.zeros(2, 3, 4, 4), bt["direction_pred"][:2], bt["scale"][:2],
                      torch.zeros(2, 3, 4, 4), bt["direction"][:2], bt["scale"][:2],
                      bt["city"][:2])  # fmt: skip


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch
    import torch.distributed as dist

    from geopose.metrics import GeoposeScore

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        rng = np.random.default_rng(100)
        batches = [_batch(rng) for _ in range(4)]
        metric = GeoposeScore()
        for bt in batches[rank::world]:
            metric.update(**bt)
        flat = metric.compute()
        if rank == 0:
            torch.save({"flat": flat, "report": metric.report}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_torchmetric_ddp_two_processes_sum_states(tmp_path):
    """Two gloo ranks each see half of the batches; the synced score is the whole set's."""
    import torch
    import torch.multiprocessing as mp

    from geopose.metrics import GeoposeScore  # noqa: F401  (imported once, before the fork)

    out_file = tmp_path / "result.pt"
    # spawn, not fork: a forked child of a process whose torch thread pools already ran (as in
    # a full test session) can deadlock inside gloo's collectives.
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), str(out_file)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    got = torch.load(out_file, weights_only=True)
    rng = np.random.default_rng(100)
    expect = _accumulate_numpy([_batch(rng) for _ in range(4)]).compute()
    assert float(got["flat"]["score"]) == pytest.approx(expect["final"], abs=1e-9)
    assert got["report"]["images"] == expect["images"] == 24


def test_zero_direction_is_scored_as_the_zero_flow_written_to_files():
    """A model with no direction evidence outputs direction (0, 0); geopose writes scale 0 and
    angle 0 for it, so validation must score exactly that (not a 0° angle error at full scale)."""
    import torch

    from geopose.metrics.torchmetric import batch_stats

    rng = np.random.default_rng(3)
    bt = _batch(rng)
    zero = bt["direction_pred"].clone()
    zero[0] = 0.0
    got = batch_stats(
        bt["agl_pred"], zero, bt["scale_pred"], bt["agl"], bt["direction"], bt["scale"]
    )
    as_written = batch_stats(
        bt["agl_pred"][:1], torch.zeros(1), torch.zeros(1), bt["agl"][:1], bt["direction"][:1],
        bt["scale"][:1],
    )  # fmt: skip
    torch.testing.assert_close(got[:1], as_written)
    assert torch.isfinite(got).all()
