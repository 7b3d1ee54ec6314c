"""Figures: the panels show what was computed, bars and curves carry the numbers given, and
``geopose show`` writes the PNG files."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geopose.cli.main import main
from geopose.errors import GeoposeDataError
from geopose.geometry import flow_from_agl
from geopose.io import write_prediction
from geopose.rectify import rectify
from geopose.viz import figure_png, image_figure, score_bars, training_curves
from geopose.viz.figures import Truth


def run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    cap = capsys.readouterr()
    return exc.value.code or 0, cap.out + cap.err


def scene(n: int = 40):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
    agl = np.zeros((n, n), np.float32)
    agl[10:20, 12:25] = 8.0
    agl[28:34, 5:12] = 3.0
    return rgb, agl


def axes_by_title(fig) -> dict[str, object]:
    return {ax.get_title().split(" (")[0].split(":")[0]: ax for ax in fig.axes if ax.get_title()}


def test_image_figure_panels_show_the_computed_maps():
    rgb, agl = scene()
    angle, scale = 2.0, 1.5
    fig = image_figure(rgb, agl, angle, scale, title="JAX_1")
    axes = axes_by_title(fig)
    assert {"RGB", "AGL", "MAG", "flow", "rectified RGB", "rectified AGL"} <= set(axes)
    want = rectify(rgb, agl, angle, scale)
    shown = axes["rectified AGL"].images[0].get_array()
    np.testing.assert_array_equal(np.ma.filled(shown, np.nan), want.agl)
    np.testing.assert_array_equal(axes["rectified RGB"].images[0].get_array(), want.rgb)
    np.testing.assert_allclose(axes["MAG"].images[0].get_array(), agl * scale)
    # the arrows are the flow (dx, dy) of the sampled pixels, drawn at true pixel length
    q = axes["flow"].collections[0]
    xs, ys = q.X.astype(int), q.Y.astype(int)
    flow = flow_from_agl(agl, angle, scale)[ys, xs]
    np.testing.assert_allclose(q.U, flow[:, 0], atol=1e-5)
    np.testing.assert_allclose(q.V, flow[:, 1], atol=1e-5)
    assert q.scale == 1 and q.scale_units == "xy"
    png = Image.open(io.BytesIO(figure_png(fig)))
    assert png.width > 600 and np.asarray(png).std() > 10


def test_image_figure_with_truth_adds_error_panels():
    rgb, agl = scene()
    pred = agl + 0.5
    fig = image_figure(None, pred, 1.0, 2.0, truth=Truth(agl, 1.2, 2.0))
    axes = axes_by_title(fig)
    assert "RGB" not in axes and "rectified RGB" not in axes
    err = axes["AGL error"].images[0].get_array()
    np.testing.assert_allclose(err, 0.5, atol=1e-6)
    hexbin_title = axes["height"].get_title()
    # R² of a constant +0.5 m offset: 1 - n·0.25 / SST
    r2 = 1 - 0.25 * agl.size / ((agl - agl.mean()) ** 2).sum()
    assert f"R² {r2:.3f}" in hexbin_title and "MAE 0.50 m" in hexbin_title
    epe = axes["flow EPE"].images[0].get_array()
    true_flow = flow_from_agl(agl, 1.2, 2.0)
    np.testing.assert_allclose(
        epe, np.linalg.norm(flow_from_agl(pred, 1.0, 2.0) - true_flow, axis=-1), atol=1e-4
    )
    with pytest.raises(ValueError):
        image_figure(None, pred, 1.0, 2.0, truth=Truth(agl[:10], 1.2, 2.0))


def test_large_images_are_thinned_for_display_only():
    agl = np.zeros((1600, 1600), np.float32)
    agl[100:300, 100:300] = 10.0
    fig = image_figure(None, agl, 0.3, 1.0, rectified=False)
    im = axes_by_title(fig)["AGL"].images[0]
    assert max(im.get_array().shape) <= 800 and im.get_extent() == [-0.5, 1599.5, 1599.5, -0.5]


def test_score_bars_carry_the_scores():
    scores = {
        "final": 0.75,
        "cities": {
            "JAX": {"score": 0.8, "r2_agl": 0.7, "r2_vflow": 0.9},
            "OMA": {"score": 0.7, "r2_agl": 0.6, "r2_vflow": None},
        },
    }
    fig = score_bars(scores)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:2] == [0.8, 0.7] and heights[2:4] == [0.7, 0.6]
    assert heights[4] == 0.9 and math.isnan(heights[5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["JAX", "OMA"]
    assert any(line.get_ydata()[0] == 0.75 for line in ax.get_lines())
    with pytest.raises(ValueError, match="cities"):
        score_bars({"final": 1.0})


def write_lightning_csv(path):
    """A log shaped like ``geopose train``'s CSVLogger output: sparse rows, one per log call."""
    rows = []
    for step in range(0, 50, 5):
        loss = 10 / (step + 1)
        rows.append(
            {
                "epoch": step // 10,
                "step": step,
                "train/loss": loss,
                "train/agl": loss / 2,
                "train/grad_norm": 3.0 + step,
            }
        )
        if step % 10 == 5:
            rows.append(
                {
                    "epoch": step // 10,
                    "step": step,
                    "val/loss": 5 / (step + 1),
                    "val/score": step / 50,
                    "val/r2_agl": step / 60,
                    "val/angle_error_deg": 9.0,
                }
            )
    pd.DataFrame(rows).to_csv(path, index=False)
    return pd.DataFrame(rows)


def test_training_curves_plot_every_metric(tmp_path):
    log = write_lightning_csv(tmp_path / "metrics.csv")
    fig = training_curves(tmp_path / "metrics.csv")
    loss_ax, score_ax, other_ax = fig.axes[:3]
    lines = {ln.get_label(): ln for ln in loss_ax.get_lines()}
    assert set(lines) == {"train/loss", "train/agl", "val/loss"}
    want = log[["step", "val/loss"]].dropna()
    np.testing.assert_allclose(lines["val/loss"].get_xdata(), want["step"])
    np.testing.assert_allclose(lines["val/loss"].get_ydata(), want["val/loss"])
    assert loss_ax.get_yscale() == "log"  # losses spanning > 20x
    assert {ln.get_label() for ln in score_ax.get_lines()} == {"val/score", "val/r2_agl"}
    assert score_ax.get_yscale() == "linear"
    assert {ln.get_label() for ln in other_ax.get_lines()} == {
        "train/grad_norm",
        "val/angle_error_deg",
    }
    with pytest.raises(GeoposeDataError, match="not found"):
        training_curves(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(GeoposeDataError, match="step"):
        training_curves(tmp_path / "bad.csv")


def test_show_cli_writes_figures(fake_dataset, tmp_path, capsys):
    train = fake_dataset.root / "train"
    pred = tmp_path / "pred"
    for stem in fake_dataset.train:
        angle, scale = fake_dataset.vflow[stem]
        write_prediction(pred, stem, np.nan_to_num(fake_dataset.agl[stem]) + 1, angle, scale)
    scores = tmp_path / "ev.json"
    scores.write_text(json.dumps({"final": 0.5, "cities": {"JAX": {"score": 0.5}}}))
    run = tmp_path / "run" / "version_0"
    run.mkdir(parents=True)
    write_lightning_csv(run / "metrics.csv")
    out = tmp_path / "figs"
    args = [
        "show",
        "--images",
        train,
        "--pred",
        pred,
        "--truth",
        train,
        "--scores",
        scores,
        "--log",
        tmp_path / "run",
        "--out",
        out,
        "--limit",
        "2",
    ]
    code, text = run_cli(capsys, *args)
    assert code == 0, text
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{s}_figure.png" for s in sorted(fake_dataset.train)[:2]] + ["scores.png", "training.png"]
    )
    for p in out.iterdir():
        assert Image.open(p).format == "PNG"
    code, text = run_cli(capsys, *args)
    assert code == 1 and "exists already" in text
    # one image
    s = fake_dataset.train[0]
    code, text = run_cli(
        capsys,
        "show",
        fake_dataset.path(s),
        "--agl",
        pred / f"{s}_AGL.tif",
        "--vflow",
        pred / f"{s}_VFLOW.json",
        "--out",
        tmp_path / "one",
    )
    assert code == 0, text
    assert (tmp_path / "one" / f"{s}_figure.png").is_file()


def test_show_cli_bad_input(tmp_path, capsys):
    bad = tmp_path / "ev.json"
    bad.write_text("[1, 2]")
    code, text = run_cli(capsys, "show", "--scores", bad, "--out", tmp_path / "o")
    assert code == 1 and str(bad) in text and "evaluate" in text
    code, text = run_cli(capsys, "show", "--out", tmp_path / "o")
    assert code == 1 and "nothing to show" in text


def test_write_figures_is_what_show_prints(fake_dataset, tmp_path):
    """``geopose show`` draws ``write_figures``: its paths, its progress, its errors."""
    from geopose.errors import ConfigError, OutputExistsError
    from geopose.viz.show import write_figures

    pred = tmp_path / "pred"
    for stem in fake_dataset.train[:2]:
        angle, scale = fake_dataset.vflow[stem]
        write_prediction(pred, stem, np.nan_to_num(fake_dataset.agl[stem]), angle, scale)
    calls = []
    shown = write_figures(tmp_path / "f", pred=pred, on_progress=lambda *c: calls.append(c))
    stems = sorted(fake_dataset.train[:2])
    assert shown.figures == [tmp_path / "f" / f"{s}_figure.png" for s in stems]
    assert shown.scores is None and shown.training is None
    assert calls == [("figures", k, 2) for k in range(3)]
    with pytest.raises(OutputExistsError):
        write_figures(tmp_path / "f", pred=pred)
    with pytest.raises(ConfigError, match="use either"):
        write_figures(tmp_path / "g", pred=pred, agl=pred / f"{stems[0]}_AGL.tif")
    with pytest.raises(GeoposeDataError, match="no complete prediction"):
        write_figures(tmp_path / "g", pred=tmp_path)
