"""Golden outputs (tests/fixtures/golden): every recipe's model and every pose-head kind, with
weights filled by a rule of each tensor's name and shape (independent of construction order
and of timm's initialisers), run on one closed-form 64² image. A refactor that changes a
number fails ``tests/models/test_golden.py``; ``tests/fixtures/golden/make_golden.py`` wrote them.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
SIZE = 64
"""Side (px) of the golden image."""
GSD, CITY = 0.4, 1
"""The golden image's GSD (m/px) and city index (JAX)."""
FIELDS = ("agl", "mag", "direction", "scale", "flow", "ramp", "facade")
"""GeoposeOutput fields, in order."""

_FEATURES = {"channels": 16, "upsample": "features"}
_SMALL = {  # a cpu_small variant: full-resolution input, resnet18 to stride 32, 16-channel heads
    "encoder": "resnet18",
    "pretrained": False,
    "input_stride": 1,
    "direction": {"kind": "ramp"},
    "encoder_kwargs": {"out_indices": [0, 1, 2, 3, 4]},
    "decoder": {"kind": "unet", "channels": [128, 64, 32, 16], "output_stride": 2},
    "agl": _FEATURES,
    "ramp": _FEATURES,
}
VARIANTS: dict[str, tuple[str, dict]] = {
    "baseline": ("baseline", {}),  # pooled direction, lstsq scale, unet
    "bloodaxe_b6_rdtsc": ("bloodaxe_b6_rdtsc", {}),  # dense attention, residual deconv
    "bloodaxe_b7": ("bloodaxe_b7", {}),  # regress scale with divide, agl gsd both
    "cpu_small": ("cpu_small", {}),  # ramp + pooled direction, regress scale, city cues
    "kbrodt": ("kbrodt", {}),  # pooled direction with gsd + city
    "selim": ("selim", {}),  # tf_efficientnetv2_l
    "flow_pose": (  # direction and scale from a dense flow head
        "cpu_small",
        {
            **_SMALL,
            "flow": _FEATURES,
            "ramp": None,
            "facade": None,
            "direction": {"kind": "flow"},
            "scale": {"kind": "flow"},
        },
    ),  # fmt: skip
    "ramp_pose": ("cpu_small", {**_SMALL, "facade": None, "scale": {"kind": "ramp"}}),
    "multiply_lstsq": (  # AGL in ground pixels × gsd; lstsq scale from mag
        "cpu_small",
        {
            **_SMALL,
            "agl": {"gsd": "multiply", "out_activation": "softplus", **_FEATURES},
            "mag": {},
            "ramp": None,
            "facade": None,
            "direction": {"kind": "dense_attention"},
            "scale": {"kind": "lstsq"},
        },
    ),  # fmt: skip
}
"""Golden name -> (recipe, model overrides)."""


def golden_image() -> np.ndarray:
    """A closed-form 64×64×3 uint8 image: oblique stripes, a bright block with a dark edge."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    r = 128 + 80 * np.sin(0.31 * x + 0.17 * y)
    g = 128 + 70 * np.cos(0.23 * x - 0.29 * y)
    b = 110 + 60 * np.sin(0.11 * (x + y))
    img = np.stack([r, g, b], axis=-1)
    img[20:40, 24:44] = (230, 220, 200)
    img[40:46, 24:44] = (40, 40, 50)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def fill(model: torch.nn.Module, salt: str = "golden") -> torch.nn.Module:
    """Overwrite every floating tensor of ``model``'s state dict by a rule of its name and shape:
    weights N(0, 1/fan_in), norm scales 1 ± 0.1, biases and running means ±0.05, running
    variances in [0.5, 1.5]. Returns ``model`` in eval mode."""
    state = model.state_dict()
    new = {}
    for key, t in state.items():
        if not t.is_floating_point():
            new[key] = t
            continue
        rng = np.random.default_rng(zlib.crc32((salt + key).encode("utf-8")))
        shape = tuple(t.shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            a = 0.5 + rng.random(shape)
        elif t.dim() >= 2:
            fan_in = int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif leaf == "weight":
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            a = 0.05 * rng.standard_normal(shape)
        new[key] = torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(shape))
    model.load_state_dict(new, strict=True)
    return model.eval()


def build(name: str) -> torch.nn.Module:
    """The golden model ``name`` (:data:`VARIANTS`), filled."""
    from geopose.models import create_model

    recipe, overrides = VARIANTS[name]
    torch.manual_seed(0)
    return fill(create_model(recipe, **{"pretrained": False, **overrides}))


@torch.no_grad()
def run(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's outputs on the golden image (fp32, CPU), by field (absent: None)."""
    img = torch.from_numpy(golden_image()).permute(2, 0, 1)[None].float() / 255.0
    out = model(img, torch.tensor([GSD]), torch.tensor([CITY]))
    return {f: getattr(out, f).float().numpy() for f in FIELDS if getattr(out, f, None) is not None}


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}
