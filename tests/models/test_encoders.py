"""Encoders by timm name: pretrained weights asked only of names timm has weights for (a recipe
that asks for missing weights is a bug caught here, not a network error at training time), and
weights that are not cached give one line naming their source and the override."""

from __future__ import annotations

import pytest

from geopose.errors import ConfigError
from geopose.models import list_recipes, load_recipe
from geopose.models.encoders import Encoder, pretrained_source


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_that_starts_pretrained_names_weights_that_exist(name):
    model = load_recipe(name)["model"]
    if model.get("family") or not model.get("pretrained"):
        return
    assert pretrained_source(model["encoder"]) is not None, model["encoder"]


def test_a_name_without_weights_is_refused_naming_the_tags_that_have_them():
    assert pretrained_source("efficientnet_b7") is None  # timm's own B7: untrained
    assert (
        pretrained_source("tf_efficientnet_b7.ns_jft_in1k") == "timm/tf_efficientnet_b7.ns_jft_in1k"
    )
    with pytest.raises(ConfigError, match="has no pretrained weights") as err:
        Encoder("efficientnet_b7", pretrained=True)
    assert "model.pretrained=false" in str(err.value)
    with pytest.raises(ConfigError, match="tags with weights: resnet18.a1_in1k"):
        Encoder("resnet18.no_such_tag", pretrained=True)


@pytest.mark.slow  # timm tries the weights' URL too, which takes its network timeouts here
def test_weights_not_cached_name_their_source_and_the_override(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network attempt: the cache decides
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError) as err:
        Encoder("resnet18.a1_in1k", pretrained=True)
    text = str(err.value)
    assert "timm/resnet18.a1_in1k" in text and "not cached" in text
    assert "model.pretrained=false" in text and "\n" not in text
