"""Make ``docs/synth_samples.png``: synthetic samples of each city (RGB with flow arrows, AGL).

    python scripts/make_synth_figure.py [--out docs/synth_samples.png] [--size 256] [--seed 3]

Each arrow starts at a pixel as seen in the oblique image and ends at its ground footprint
(flow = AGL · scale · (sin angle, cos angle)); the AGL panel shows the truth in metres.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np

from geopose.synth.dataset import _streams, render_image

CITIES = ("ARG", "ATL", "JAX", "OMA")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/synth_samples.png"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--per-city", type=int, default=2)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    k = args.per_city
    fig, axes = plt.subplots(
        len(CITIES), 2 * k, figsize=(2.6 * 2 * k, 2.75 * len(CITIES)), layout="constrained"
    )
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="deepskyblue")
    for row, city in enumerate(CITIES):
        for j in range(k):
            index = row + len(CITIES) * j  # the images write_dataset gives this city
            _, geo, r, agl = render_image(city, args.size, _streams(args.seed, "train", index))
            ax_rgb, ax_agl = axes[row, 2 * j], axes[row, 2 * j + 1]
            ax_rgb.imshow(r.rgb)
            step = args.size // 10
            ys, xs = np.mgrid[step // 2 : args.size : step, step // 2 : args.size : step]
            h = np.nan_to_num(r.agl[ys, xs])
            keep = h > 2.0
            mag = h * geo.scale
            dx, dy = mag * math.sin(geo.angle), mag * math.cos(geo.angle)
            ax_rgb.quiver(
                xs[keep],
                ys[keep],
                dx[keep],
                dy[keep],
                angles="xy",
                scale_units="xy",
                scale=1,
                color="yellow",
                width=0.006,
                headwidth=3,
            )
            ax_rgb.set_title(
                f"{city}  angle {math.degrees(geo.angle):.0f}°  scale {geo.scale:.2f} px/m\n"
                f"sun {math.degrees(geo.sun):.0f}° (elev. {math.degrees(geo.elevation):.0f}°)",
                fontsize=8,
            )
            im = ax_agl.imshow(agl, cmap=cmap, vmin=0, vmax=25, interpolation="nearest")
            ax_agl.set_title(
                f"AGL truth (m), mean {np.nanmean(agl):.1f}\n(blue: no LiDAR)", fontsize=8
            )
            for ax in (ax_rgb, ax_agl):
                ax.set_xticks([])
                ax.set_yticks([])
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="AGL (m)")
    fig.suptitle(
        "geopose synth: oblique RGB with flow arrows (seen → ground) and exact AGL", fontsize=11
    )
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {img.size[0]}×{img.size[1]})")


if __name__ == "__main__":
    main()
