"""Models: every recipe and encoder builds and returns geopose outputs of the right shape and
unit; heads obey their physics (GSD, least squares, flow); recipes and checkpoints load."""

from __future__ import annotations

import math

import pytest
import torch

from geopose.errors import ConfigError, GeoposeDataError
from geopose.models import (
    Encoder,
    GeoposeLoss,
    GeoposeOutput,
    create_model,
    list_recipes,
    load_checkpoint,
    load_recipe,
)
from geopose.models.heads import flow_pose, gradient_magnitude, lstsq_scale

RECIPES = ["baseline", "bloodaxe_b6_rdtsc", "bloodaxe_b7", "cpu_small", "kbrodt", "selim"]
ENCODERS = [
    "resnet18",
    "resnet34",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "efficientnet_b6",
    "efficientnet_b7",
    "tf_efficientnetv2_l",
    "legacy_senet154",
]
# A tiny model for the physics tests (fast on 2 cores).
TINY = {
    "encoder": "resnet18",
    "decoder": {"channels": [32, 16, 16], "output_stride": 4},
    "agl": {"channels": 8},
    "mag": {"channels": 8},
}


def _inputs(b: int = 2, h: int = 64, w: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(b, 3, h, w, generator=g),
        torch.tensor([0.3, 0.5][:b]),
        torch.tensor([0, -1][:b]),
    )


def _batch(b: int, h: int, w: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    agl = torch.rand(b, 1, h, w, generator=g) * 20
    angle = torch.rand(b, generator=g) * 2 * math.pi
    scale = 0.5 + torch.rand(b, generator=g)
    agl[:, :, :5, :5] = float("nan")
    return {
        "agl": agl,
        "mag": agl * scale[:, None, None, None],
        "direction": torch.stack([torch.sin(angle), torch.cos(angle)], 1),
        "scale": scale,
        "gsd": torch.full((b,), 0.4),
        "city": torch.tensor([0, 3][:b]),
    }


def test_list_recipes_has_every_reference_architecture():
    assert set(RECIPES) <= set(list_recipes())


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_gives_geopose_outputs_and_trains_its_encoder(recipe):
    torch.manual_seed(0)
    model = create_model(recipe, pretrained=False)
    image, gsd, city = _inputs(2, 64, 64)
    out = model(image, gsd, city)
    assert isinstance(out, GeoposeOutput)
    assert out.agl.shape == (2, 1, 64, 64) and out.mag.shape == (2, 1, 64, 64)
    assert out.direction.shape == (2, 2) and out.scale.shape == (2,)
    torch.testing.assert_close(out.direction.norm(dim=1), torch.ones(2))
    assert torch.isfinite(out.agl).all() and torch.isfinite(out.scale).all()
    if model.config["scale"]["kind"] != "lstsq":  # regressed / flow scales are |v| or softplus
        assert (out.scale >= 0).all()
    total, parts = GeoposeLoss(load_recipe(recipe)["loss"])(out, _batch(2, 64, 64))
    assert torch.isfinite(total) and {"agl", "scale"} <= set(parts)
    assert {"direction", "ramp"} & set(parts)  # a direction loss, or the ramps it is read off
    total.backward()
    first = next(p for p in model.encoder.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_builds_by_name_and_gives_a_stride_pyramid(name):
    enc = Encoder(name).eval()
    assert enc.reductions == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = enc(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == enc.channels
    assert [64 // f.shape[-1] for f in feats] == enc.reductions


def test_unknown_encoder_and_bad_keys_are_config_errors():
    with pytest.raises(ConfigError, match="not_a_net"):
        create_model(dict(TINY, encoder="not_a_net"))
    with pytest.raises(ConfigError, match="colour"):
        create_model(dict(TINY, colour="red"))
    with pytest.raises(ConfigError, match="flow head"):
        create_model(dict(TINY, direction={"kind": "flow"}))
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_recipe("no_such_recipe")


def test_swapping_the_encoder_is_one_string():
    model = create_model("baseline", encoder="mobilenetv3_large_100", pretrained=False)
    assert model.encoder.name == "mobilenetv3_large_100"
    assert model.config["decoder"]["kind"] == "unet"


def test_recipe_extends_inherits_and_overrides():
    r = load_recipe("bloodaxe_b6_rdtsc")
    assert r["model"]["encoder"] == "tf_efficientnet_b6.ns_jft_in1k"
    assert r["model"]["decoder"]["kind"] == "residual_deconv"
    assert r["loss"]["agl"] == {"kind": "huber", "delta": 10.0, "weight": 1.0}
    assert r["model"]["agl"]["gsd"] == "both"  # from bloodaxe_b7


def test_recipe_from_a_yaml_path_and_bad_yaml(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("extends: cpu_small\nmodel: {decoder: {channels: [16, 16, 16]}}\n")
    assert load_recipe(good)["model"]["encoder"] == "resnet18"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(GeoposeDataError, match="bad.yaml"):
        load_recipe(bad)


@pytest.mark.parametrize("hw", [(50, 70), (32, 160)])
def test_any_size_is_padded_and_cropped_back(hw):
    model = create_model(TINY).eval()
    image = torch.rand(1, 3, *hw)
    with torch.no_grad():
        out = model(image, torch.tensor([0.3]))
    assert out.agl.shape == (1, 1, *hw) and out.mag.shape == (1, 1, *hw)


def test_gsd_multiply_turns_ground_pixels_into_metres():
    """With gsd='multiply' the AGL is proportional to the GSD; scale 'divide' is ∝ 1/GSD."""
    cfg = dict(TINY, agl={"channels": 8, "gsd": "multiply"})
    cfg["scale"] = {"kind": "regress", "gsd": "divide", "hidden": 16}
    model = create_model(cfg).eval()
    image = torch.rand(1, 3, 64, 64).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(image, torch.tensor([0.3, 0.6]))
    torch.testing.assert_close(out.agl[1], 2 * out.agl[0])
    torch.testing.assert_close(out.scale[1], out.scale[0] / 2)


def test_head_upsampling_the_output_convolves_at_the_decoder_stride():
    from geopose.models.heads import DenseHead

    opts = dict(channels=8, activation="relu", out_activation="none", out_scale=1.0, city=False)
    x = torch.rand(2, 16, 12, 10)
    cheap = DenseHead(16, 4, 2, upsample="output", **opts).eval()
    full = DenseHead(16, 4, 2, **opts).eval()
    with torch.no_grad():
        y, low = cheap(x), cheap.body(x)
        assert y.shape == full(x).shape == (2, 2, 48, 40)
    # One 3×3 convolution at stride 4, and the output is that map bilinearly upsampled ×4.
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in cheap.body) == 1
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in full.body) == 2
    assert low.shape == (2, 2, 12, 10)
    up = torch.nn.functional.interpolate(low, scale_factor=4.0, mode="bilinear")
    torch.testing.assert_close(y, up)
    model = create_model("cpu_small", agl={"upsample": "output"}, ramp={"upsample": "output"})
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 96), torch.tensor([0.3]))
    assert out.agl.shape == (1, 1, 64, 96) and out.ramp.shape == (1, 2, 64, 96)
    with pytest.raises(ConfigError, match="upsample"):
        create_model("cpu_small", agl={"upsample": "nearest"})


def test_input_stride_reads_the_image_area_averaged():
    """With ``input_stride`` 2 the network sees 2×2 block means: a pattern that keeps every
    block's mean changes nothing (it does at stride 1), and outputs keep the input's size."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 96) * 0.5 + 0.25
    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(32, 48)  # zero mean per 2×2 block
    patterned = image + 0.2 * sign
    gsd = torch.tensor([0.3])
    for stride, same in ((2, True), (1, False)):
        torch.manual_seed(1)
        model = create_model("cpu_small", input_stride=stride).eval()
        with torch.no_grad():
            a, b = model(image, gsd), model(patterned, gsd)
        assert torch.allclose(a.agl, b.agl, atol=1e-5) is same, stride
        assert torch.allclose(a.ramp, b.ramp, atol=1e-6) is same, stride
    assert model.divisor * 2 == create_model("cpu_small", input_stride=2).divisor
    odd = create_model("cpu_small", input_stride=2).eval()
    with torch.no_grad():
        out = odd(torch.rand(2, 3, 70, 45), torch.tensor([0.3, 0.5]))
    assert out.agl.shape == (2, 1, 70, 45) and out.facade.shape == (2, 1, 70, 45)
    assert out.direction.shape == (2, 2) and out.scale.shape == (2,)
    with pytest.raises(ConfigError, match="input_stride: 3 is not a power of 2"):
        create_model("cpu_small", input_stride=3)
    with pytest.raises(ConfigError, match="input_stride"):
        create_model("cpu_small", input_stride=0)


def test_head_depth_and_dilation_widen_its_context_exactly():
    from geopose.models.heads import DenseHead

    opts = dict(channels=4, activation="gelu", out_activation="none", out_scale=1.0, city=False)
    # At stride 1 the default head is one 1×1 convolution: it sees its own pixel only.
    for depth, dilation, reach in ((1, 1, 0), (2, 1, 1), (3, 2, 4)):
        torch.manual_seed(0)
        head = DenseHead(3, 1, 1, depth=depth, dilation=dilation, **opts).eval()
        x = torch.rand(1, 3, 21, 21, requires_grad=True)
        head(x)[0, 0, 10, 10].backward()  # which input pixels does the centre output see?
        seen = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
        assert int((seen - 10).abs().max()) == reach, (depth, dilation)
        n3 = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in head.body)
        assert n3 == depth - 1
    model = create_model("cpu_small", facade={"depth": 3, "dilation": 2})
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 64), torch.tensor([0.3]))
    assert out.facade.shape == (1, 1, 64, 64)
    with pytest.raises(ConfigError, match="depth"):
        create_model("cpu_small", facade={"depth": 0})


def test_gsd_and_city_change_the_prediction_when_used():
    model = create_model("cpu_small", decoder={"channels": [16, 16, 16, 16]}).eval()
    image = torch.rand(1, 3, 64, 64).expand(2, -1, -1, -1)
    with torch.no_grad():
        by_gsd = model(image, torch.tensor([0.3, 0.6]), torch.tensor([1, 1]))
        by_city = model(image, torch.tensor([0.3, 0.3]), torch.tensor([1, 2]))
    assert not torch.allclose(by_gsd.agl[0], by_gsd.agl[1])
    assert not torch.allclose(by_city.agl[0], by_city.agl[1])
    with pytest.raises(ValueError, match="gsd"):
        model(image)


def test_flow_least_squares_recovers_direction_and_scale():
    """flow = agl · scale · (sin a, cos a) exactly -> the fit returns a and scale."""
    agl = torch.rand(2, 1, 16, 16) * 30
    a = torch.tensor([0.3, 4.0])
    scale = torch.tensor([1.7, 0.4])
    d = torch.stack([torch.sin(a), torch.cos(a)], 1)
    flow = agl * (scale[:, None] * d)[:, :, None, None]
    direction, s, mag = flow_pose(flow, agl)
    torch.testing.assert_close(direction, d)
    torch.testing.assert_close(s, scale)
    torch.testing.assert_close(mag, agl * scale[:, None, None, None])
    torch.testing.assert_close(lstsq_scale(mag, agl), scale)


def test_flow_pose_has_no_direction_for_a_flat_scene():
    """No heights, no evidence: direction (0, 0), "unknown"
    (tests/inference/test_direction_fallback.py)."""
    direction, scale, _ = flow_pose(torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8))
    torch.testing.assert_close(direction, torch.zeros(1, 2))
    assert scale.item() < 1e-3


def test_kbrodt_mag_is_agl_times_scale():
    model = create_model(
        "kbrodt", encoder="resnet18", decoder={"channels": [16, 16, 16]}, pretrained=False
    ).eval()
    image, gsd, city = _inputs()
    with torch.no_grad():
        out = model(image, gsd, city)
    torch.testing.assert_close(out.mag, out.agl * out.scale[:, None, None, None])


def test_dense_attention_follows_the_agl_edges():
    """The dense head averages its per-pixel directions with softmax(β·|∇AGL|) weights: with a
    sharp β the direction is the one on the building edge, with β → 0 the image's mean."""
    from geopose.config import MODEL_DEFAULTS
    from geopose.models.pose import DenseAttentionDirection

    agl = torch.zeros(1, 1, 16, 16)
    agl[..., 8:] = 10.0  # one 10 m step between columns 7 and 8
    g = gradient_magnitude(agl)[0, 0]
    assert g[:, 7:9].min() > 1.0 and g[:, :5].max() < 1e-5 and g[:, 11:].max() < 1e-5
    field = torch.zeros(1, 2, 16, 16)
    field[:, 1] = 1.0  # (sin, cos) = (0, 1) on flat pixels: angle 0
    field[:, :, :, 6:10] = torch.tensor([1.0, 0.0])[None, :, None, None]  # π/2 on the edge
    cfg = MODEL_DEFAULTS["direction"]
    sharp, flat = (DenseAttentionDirection({**cfg, "beta": b}, 0, 2) for b in (5.0, 1e-6))
    # the field is given: test the attention only
    with torch.no_grad():
        d_sharp = sharp.attend(field, agl, (16, 16))[0]
        d_flat = flat.attend(field, agl, (16, 16))[0]
    torch.testing.assert_close(d_sharp, torch.tensor([1.0, 0.0]), atol=1e-3, rtol=0)
    # β → 0: plain mean of the unit field, 4 of 16 columns at π/2 -> atan2(1/4, 3/4)
    assert float(torch.atan2(d_flat[0], d_flat[1])) == pytest.approx(math.atan2(1, 3), abs=1e-3)


def _tiny_checkpoint(tmp_path, recipe: str = "cpu_small"):
    config = load_recipe(recipe)
    config["model"] = dict(config["model"], decoder={"channels": [16, 16, 16]})
    model = create_model(config).eval()
    ckpt = {
        "epoch": 3,
        "pytorch-lightning_version": "2.6.0",
        "hyper_parameters": {"config": config},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [],
    }
    path = tmp_path / "tiny.ckpt"
    torch.save(ckpt, path)
    return path, model, config


def test_load_checkpoint_rebuilds_the_same_model(tmp_path):
    path, model, config = _tiny_checkpoint(tmp_path)
    loaded, cfg = load_checkpoint(path)
    assert cfg == config and not loaded.training
    image, gsd, city = _inputs()
    with torch.no_grad():
        a, b = model(image, gsd, city), loaded(image, gsd, city)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    path, _, _ = _tiny_checkpoint(tmp_path)
    corrupt = tmp_path / "corrupt.ckpt"  # a checkpoint cut short, as by a full disk
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GeoposeDataError, match="corrupt.ckpt.*not a readable"):
        load_checkpoint(corrupt)
    with pytest.raises(GeoposeDataError, match="missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(GeoposeDataError, match="other.ckpt.*not a geopose checkpoint"):
        load_checkpoint(other)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    torch.save(ckpt, tmp_path / "partial.ckpt")
    with pytest.raises(GeoposeDataError, match="partial.ckpt.*do not fit"):
        load_checkpoint(tmp_path / "partial.ckpt")


GPU_RECIPES = ["baseline", "bloodaxe_b6_rdtsc", "bloodaxe_b7", "kbrodt", "selim"]


def test_gpu_recipes_start_from_imagenet_and_cpu_small_stays_offline():
    for recipe in GPU_RECIPES:
        assert load_recipe(recipe)["model"]["pretrained"] is True, recipe
    assert not load_recipe("cpu_small")["model"].get("pretrained", False)


def _refuse_pretrained(monkeypatch):
    """timm.create_model that fails, as offline, whenever ImageNet weights are asked for."""
    import timm

    real = timm.create_model

    def create(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)


def test_offline_imagenet_weights_error_says_how_to_turn_them_off(monkeypatch):
    _refuse_pretrained(monkeypatch)
    with pytest.raises(ConfigError, match=r"model\.pretrained=false") as err:
        create_model("baseline", encoder="resnet18")
    assert "resnet18" in str(err.value) and "\n" not in str(err.value)


def test_loading_a_checkpoint_of_a_pretrained_recipe_never_fetches(tmp_path, monkeypatch):
    config = load_recipe("baseline")
    config["model"] = dict(config["model"], encoder="resnet18", decoder={"channels": [16, 16, 16]})
    assert config["model"]["pretrained"] is True
    model = create_model(config, pretrained=False).eval()
    path = tmp_path / "pre.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state}, path)
    _refuse_pretrained(monkeypatch)
    loaded, _ = load_checkpoint(path)  # would raise if it asked timm for the ImageNet weights
    image, gsd, city = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(image, gsd, city).agl, loaded(image, gsd, city).agl)
