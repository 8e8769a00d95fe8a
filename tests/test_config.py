import pytest

from vce.config import ConfigError, Variant, load_config, load_config_text
from conftest import ROOT


def test_profiles_load_and_paper_settings():
    paper = load_config(ROOT / "params.yaml", "paper")
    assert paper.split.image_size == 192
    assert paper.train.iterations == 14000
    assert paper.train.lr == pytest.approx(2e-4) and paper.train.beta1 == pytest.approx(0.5)
    assert paper.synth.n_patients == 80
    assert [v.name for v in paper.variants][0] == "pgmgvce_main"
    assert len(paper.variants) == 8
    assert sum(v.model == "mmgsn" for v in paper.variants) == 1


def test_unknown_key_is_an_error():
    text = (ROOT / "params.yaml").read_text()
    assert text.count("log_every: 10") == 1  # the demo profile's
    text = text.replace("log_every: 10", "log_evry: 10")
    with pytest.raises(ConfigError, match="log_evry"):
        load_config_text(text, "demo")


def test_unknown_profile_is_an_error():
    with pytest.raises(ConfigError, match="no profile"):
        load_config(ROOT / "params.yaml", "nope")


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "x", "model": "unet"},
        {"name": "x", "normalization": "minmax"},
        {"name": "x", "modalities": ["T1C"]},
        {"name": "x", "lambda_pg": -1},
        {"name": "../x"},
    ],
)
def test_invalid_variants_rejected(bad):
    with pytest.raises(ConfigError):
        Variant.from_any(bad)


def test_variant_modalities_are_canonical_order():
    v = Variant.from_any({"name": "x", "modalities": ["T2", "T1"]})
    assert v.modalities == ("T1", "T2")
    assert Variant.from_any(v.to_json()) == v
