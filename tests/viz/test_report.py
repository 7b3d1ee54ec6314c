"""The HTML report: same numbers as ``geopose evaluate``, worst/best ranking, self-contained,
and rendered by a real headless browser (Debian's chromium; skipped where it is absent)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from geopose.cli.main import main
from geopose.io import write_prediction
from geopose.metrics import evaluate_folders
from geopose.viz.report import build_report


def run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    cap = capsys.readouterr()
    return exc.value.code or 0, cap.out + cap.err


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A fake data set and predictions whose quality falls with the image index."""
    from helpers.fake_data import make_fake_dataset  # the fixture is function-scoped; share one set

    root = tmp_path_factory.mktemp("report")
    ds = make_fake_dataset(root / "data", n_train=5, n_test=0, size=48)
    pred = root / "pred"
    rng = np.random.default_rng(0)
    for i, stem in enumerate(sorted(ds.train)):
        angle, scale = ds.vflow[stem]
        noisy = np.nan_to_num(ds.agl[stem]) + rng.normal(0, 1.5 * i, ds.agl[stem].shape)
        write_prediction(pred, stem, noisy.clip(0), angle + 0.03 * i, scale * (1 + 0.05 * i))
    return ds, pred


@pytest.fixture(scope="module")
def page(scored) -> str:
    """The report with truth and images, 2 worst + 2 best figures (built once)."""
    ds, pred = scored
    train = ds.root / "train"
    return build_report(pred, truth_dir=train, images_dir=train, n_show=2)


class Tables(HTMLParser):
    """Cell texts of every <table id=...>, and every <img src>."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = ""
        elif tag == "img":
            self.images.append(a["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def parse(page: str) -> Tables:
    p = Tables()
    p.feed(page)
    return p


def test_report_scores_match_evaluate_and_rank_images(scored, page):
    ds, pred = scored
    train = ds.root / "train"
    doc = parse(page)
    want = evaluate_folders(pred, train, workers=1)
    rows = {r[0]: r for r in doc.tables["scores"][1:]}
    for city, m in want["cities"].items():
        assert rows[city][1] == f"{m['score']:.4f}"
        assert rows[city][2] == f"{m['r2_agl']:.4f}" and rows[city][3] == f"{m['r2_vflow']:.4f}"
    assert rows["final"][1] == f"{want['final']:.4f}"
    # images ranked worst first: the noisiest predictions are the last stems
    order = [r[0] for r in doc.tables["images"][1:]]
    assert order[0] == sorted(ds.train)[-1] and order[-1] == sorted(ds.train)[0]
    scores = [float(r[6]) for r in doc.tables["images"][1:]]
    assert scores == sorted(scores)
    # bars + 2 worst + 2 best figures, all embedded PNGs; nothing fetched from outside
    assert len(doc.images) == 5
    for src in doc.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r"(src|href)=\"(http|//|file:)", page)
    worst = page.index("Worst images")
    assert page.index(order[0], worst) < page.index("Best images")


def test_report_without_truth_lists_predictions(scored):
    ds, pred = scored
    doc = parse(build_report(pred, n_show=1))
    assert "scores" not in doc.tables and len(doc.images) == 1
    assert len(doc.tables["images"]) == 1 + len(ds.train)


def test_report_cli_errors(scored, tmp_path, capsys):
    ds, pred = scored
    out = tmp_path / "r.html"
    code, text = run_cli(
        capsys, "report", pred, "--truth", ds.root / "train", "--out", out, "--show", "1"
    )
    assert code == 0, text
    assert parse(out.read_text()).tables["scores"]
    code, text = run_cli(capsys, "report", pred, "--out", out)
    assert code == 1 and "exists already" in text
    partial = tmp_path / "partial"
    shutil.copytree(pred, partial)
    victim = sorted(partial.glob("*_VFLOW.json"))[0]
    victim.unlink()
    code, text = run_cli(
        capsys, "report", partial, "--truth", ds.root / "train", "--out", tmp_path / "p.html"
    )
    assert code == 1 and "missing" in text and victim.name.split("_VFLOW")[0] in text
    assert not (tmp_path / "p.html").exists()


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var t = document.getElementById('scores');
  var m = document.createElement('div');
  m.id = 'browser-check';
  m.textContent = 'images ' + imgs.length + ' decoded ' + ok.length + ' rows ' +
    (t ? t.rows.length : 0) + ' width ' + (t ? t.getBoundingClientRect().width : 0);
  document.body.appendChild(m);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on this machine (.ci/run installs it)")


def run_chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_report_renders_in_headless_chromium(scored, page, tmp_path):
    ds, _ = scored
    html_path = tmp_path / "report.html"
    html_path.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    res = run_chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri())
    m = re.search(r"images (\d+) decoded (\d+) rows (\d+) width ([\d.]+)", res.stdout)
    assert m, f"no check marker in the DOM; chromium said: {res.stderr[-2000:]}"
    n_img, decoded, rows, width = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    assert n_img == 5 and decoded == n_img
    assert rows == 1 + len({s.split("_")[0] for s in ds.train}) + 1 and width > 200
    # and the pixels: a screenshot of the page is not blank and shows the coloured figures
    shot = tmp_path / "shot.png"
    res = run_chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", html_path.as_uri()
    )
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colourful = (img.max(-1) - img.min(-1)) > 60
    assert colourful.mean() > 0.05
