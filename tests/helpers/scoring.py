"""An independent reference for the competition score: straightforward all-at-once numpy.

``reference_score(images)`` takes ``(city, pred, truth, angle_p, scale_p, angle_t, scale_t)``
tuples (AGL in metres with NaN for missing truth, angles in radians, scales in px/m) and returns
each city's components; tests compare geopose.metrics and the files a run writes against it.
"""

from __future__ import annotations

import math

import numpy as np


def reference_score(images) -> dict:
    """Straightforward numpy: concatenate every valid pixel of a city, build the flows."""
    cities = {}
    for city, p, t, a_p, s_p, a_t, s_t in images:
        c = cities.setdefault(city, {"t": [], "p": [], "ft": [], "fp": [], "ang": [], "sc": []})
        v = ~np.isnan(t)
        tv = t[v].astype(np.float64)
        pv = np.nan_to_num(p[v].astype(np.float64))  # NaN prediction = 0 m
        c["t"].append(tv)
        c["p"].append(pv)
        c["ft"].append(np.stack([tv * s_t * math.sin(a_t), tv * s_t * math.cos(a_t)], 1))
        c["fp"].append(np.stack([pv * s_p * math.sin(a_p), pv * s_p * math.cos(a_p)], 1))
        diff = abs((a_p - a_t + math.pi) % (2 * math.pi) - math.pi)
        c["ang"].append(math.degrees(diff))
        c["sc"].append(abs(s_p - s_t))

    def r2(y, yhat):
        return 1.0 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)

    out = {}
    for city, c in cities.items():
        t, p = np.concatenate(c["t"]), np.concatenate(c["p"])
        ft, fp = np.concatenate(c["ft"]), np.concatenate(c["fp"])
        r2a, r2v = r2(t, p), r2(ft.ravel(), fp.ravel())
        out[city] = {
            "r2_agl": r2a,
            "r2_vflow": r2v,
            "score": (r2a + r2v) / 2,
            "agl_mae": np.mean(np.abs(p - t)),
            "agl_rmse": np.sqrt(np.mean((p - t) ** 2)),
            "epe": np.mean(np.linalg.norm(fp - ft, axis=1)),
            "angle_error_deg": np.mean(c["ang"]),
            "scale_error": np.mean(c["sc"]),
            "pixels": t.size,
            "images": len(c["ang"]),
        }
    return out
