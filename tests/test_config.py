import re

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
    assert len([v for v in paper.variants if v.seed_offset == 0 and v.paper]) == 8  # the paper's eight
    assert sum(v.model == "mmgsn" and v.seed_offset == 0 for v in paper.variants) == 1
    assert {v.name for v in paper.variants if not v.paper} == {"norm_tanh_f1", "pgmgvce_pg_gan_l1"}
    mid = load_config(ROOT / "params.yaml", "mid")
    assert mid.split.image_size == mid.synth.matrix[0] == 96 and mid.synth.n_patients == 24
    assert {v.name for v in mid.variants if v.seed_offset} == {
        "pgmgvce_main_seed1", "pgmgvce_main_seed2", "baseline_mmgsn_seed1", "baseline_mmgsn_seed2"}
    assert len([v for v in mid.variants if v.paper and not v.seed_offset]) == 8


def test_unknown_key_is_an_error():
    text = (ROOT / "params.yaml").read_text()
    assert text.count("log_every: 10") == 2  # the demo and mid profiles'
    text = text.replace("log_every: 10", "log_evry: 10", 1)
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


# --------------------------------------------------------------------------- validated at load, key named

PARAMS = (ROOT / "params.yaml").read_text()
TINY_VAL = "val_patients: 0  # TRAIN patients held out for validation: count or fraction (<1); 0 = off (tests enable it)"


def _tiny_text(old: str, new: str) -> str:
    """params.yaml with ``old`` (which must occur in the tiny profile, or once in the file) replaced."""
    head, tiny = PARAMS.split("  tiny:\n")
    if old in tiny:
        return head + "  tiny:\n" + tiny.replace(old, new, 1)
    assert PARAMS.count(old) == 1, old
    return PARAMS.replace(old, new)


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("iterations: 4\n", "iterations: -5\n", r"params\.yaml:profiles\.tiny\.train\.iterations must be >= 1 \(got -5\)"),
        ("iterations: 4\n", 'iterations: "four"\n', r"profiles\.tiny\.train\.iterations must be an integer \(got 'four'\)"),
        ("iterations: 4\n", "iterations: 4.5\n", r"profiles\.tiny\.train\.iterations must be an integer"),
        ("batch_size: 2\n", "batch_size: true\n", r"profiles\.tiny\.train\.batch_size must be an integer \(got True\)"),
        ("lr: 2.0e-4\n", "lr: fast\n", r"profiles\.tiny\.train\.lr must be a finite number \(got 'fast'\)"),
        ("lr: 2.0e-4\n", "lr: .nan\n", r"profiles\.tiny\.train\.lr must be a finite number"),
        ("compile: false", "compile: 0", r"profiles\.tiny\.train\.compile must be true or false"),
        ("gp_type: r1", "gp_type: wgan", r"profiles\.tiny\.train\.gp_type must be one of \('r1', 'wgan_gp'\)"),
        ("amp: \"off\"", "amp: fp8", r"profiles\.tiny\.train\.amp must be one of"),
        ("keep: last", "keep: best", r"profiles\.tiny\.train: keep: best needs validation"),
        (TINY_VAL, "val_patients: 1.5", r"profiles\.tiny\.train\.val_patients must be 0, a count"),
        ("n_patients: 8\n", "n_patients: 0\n", r"profiles\.tiny\.synth\.n_patients must be >= 1 \(got 0\)"),
        ("matrix: [48, 48]", "matrix: [48]", r"profiles\.tiny\.synth\.matrix must be a list of 2 integers"),
        ("matrix: [48, 48]", "matrix: 48", r"profiles\.tiny\.synth\.matrix must be a list of 2 integers \(got 48\)"),
        ("seed: 7\n", "seed: seven\n", r"profiles\.tiny\.seed must be an integer >= 0 \(got 'seven'\)"),
        ("on_failure: exclude", "on_failure: ignore", r"profiles\.tiny\.register\.on_failure must be 'exclude' or 'stop'"),
        ("parallelism: 2\n      main_variant: pgmgvce_main", "parallelism: 0\n      main_variant: pgmgvce_main",
         r"profiles\.tiny\.study\.parallelism must be >= 1"),
        ("main_variant: pgmgvce_main", "main_variant: nope", r"profiles\.tiny\.study\.main_variant must name one of the variants"),
        ("lambda_pg: 10.0", "lambda_pg: -1", r"params\.yaml:variants\.ratio_10to1\.lambda_pg must be >= 0 \(got -1\)"),
        ("lambda_pg: 0.0,  lambda_gan: 1.0,  lambda_l1: 100.0", "lambda_pg: 0,  lambda_gan: 0,  lambda_l1: 0",
         r"variants\.baseline_mmgsn: all generator loss weights are 0, nothing to train"),
        ("model: mmgsn,   lambda_pg", "model: unet,   lambda_pg", r"variants\.baseline_mmgsn\.model must be one of \('pgmgvce', 'mmgsn'\)"),
        ("normalization: tanh,", "normalization: 1,", r"variants\.norm_tanh\.normalization must be a string"),
    ],
)
def test_bad_params_fail_at_load_naming_the_key(old, new, match):
    with pytest.raises(ConfigError, match=match):
        load_config_text(_tiny_text(old, new), "tiny", source="params.yaml")


def test_section_that_is_not_a_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match=r"profiles\.tiny\.evaluate: expected a mapping"):
        head, tiny = PARAMS.split("  tiny:\n")
        tiny = re.sub(r"    evaluate:\n(      .*\n)+", "    evaluate: [4095]\n", tiny, count=1)
        load_config_text(head + "  tiny:\n" + tiny, "tiny")


@pytest.mark.parametrize("old, new, match", [
    ("max_fov_missing: 0.03", "max_fov_missing: 1.5", r"profiles\.tiny\.split\.max_fov_missing must be in \[0.0, 1.0\]"),
    ("ring_px: 3", "ring_px: 0", r"profiles\.tiny\.evaluate\.ring_px must be >= 1"),
    ("ci_level: 0.95", "ci_level: 2", r"profiles\.tiny\.evaluate\.ci_level must be in"),
    ("seed_offset: 1}\n  baseline", "seed_offset: -1}\n  baseline", r"variants\.pgmgvce_main_seed1\.seed_offset must be >= 0"),
])
def test_evaluation_params_are_checked_at_load(old, new, match):
    with pytest.raises(ConfigError, match=match):
        load_config_text(_tiny_text(old, new), "tiny", source="params.yaml")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_direct_construction_is_validated_too():
    from vce.config import AMP_MODES, GP_TYPES, KEEP, StudyConfig, SynthConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"^train\.iterations must be >= 1 \(got 0\)$"):
        TrainConfig(iterations=0)
    with pytest.raises(ConfigError, match=r"^synth\.snr_t1c must be a finite number \(got inf\)$"):
        SynthConfig(snr_t1c=float("inf"))
    with pytest.raises(ConfigError, match=r"^variants\.z: all generator loss weights are 0, nothing to train$"):
        Variant("z", lambda_pg=0, lambda_gan=0, lambda_l1=0)
    with pytest.raises(ConfigError, match="study.parallelism"):
        StudyConfig(parallelism=0)
    for gp in GP_TYPES:
        assert TrainConfig(gp_type=gp).gp_type == gp
    for amp in AMP_MODES:
        assert TrainConfig(amp=amp).amp == amp
    assert TrainConfig(keep=KEEP[1], val_patients=1).keep == "best"
    assert SynthConfig(matrix=[64, 64]).matrix == (64, 64)  # lists (YAML) become tuples


def test_all_problems_of_a_section_reported_together():
    from vce.config import TrainConfig

    with pytest.raises(ConfigError) as info:
        TrainConfig(iterations=0, batch_size=0, gp_type="x")
    msg = str(info.value)
    assert "train.iterations" in msg and "train.batch_size" in msg and "train.gp_type" in msg


def test_main_variant_is_read_and_required():
    for profile in ("demo", "paper", "tiny"):
        assert load_config(ROOT / "params.yaml", profile).study.main_variant == "pgmgvce_main"
    renamed = _tiny_text("main_variant: pgmgvce_main", "main_variant: t1_only")
    assert load_config_text(renamed, "tiny").study.main_variant == "t1_only"
    missing = _tiny_text("      main_variant: pgmgvce_main", "")
    with pytest.raises(ConfigError, match=r"study\.main_variant must name one of the variants .* \(got ''\)"):
        load_config_text(missing, "tiny")


def test_variant_from_json():
    v = Variant.from_json('{"name": "r2", "lambda_pg": 2.0, "modalities": ["T2"]}')
    assert v == Variant("r2", lambda_pg=2.0, modalities=("T2",))
    assert Variant.from_json(v.to_json()) == v
    with pytest.raises(ConfigError, match="not valid JSON"):
        Variant.from_json("{name: r2}")
    with pytest.raises(ConfigError, match="must be a mapping"):
        Variant.from_json('["r2"]')
    with pytest.raises(ConfigError, match=r"variants\.r2: unknown key\(s\) \['lambda_x'\]"):
        Variant.from_json('{"name": "r2", "lambda_x": 1}')


def test_config_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, vce.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_generators_are_the_config_models():
    from vce.config import MODELS
    from vce.models.factory import GENERATORS, build_generator

    assert tuple(GENERATORS) == MODELS
    for name in MODELS:
        assert isinstance(build_generator(name, 2, 4), GENERATORS[name])


def test_extra_variants_are_marked_beyond_the_paper_and_selected_per_profile():
    text = (ROOT / "params.yaml").read_text()
    cfg = load_config_text(text, "tiny")
    extra = {v.name: v for v in cfg.variants if not v.paper}
    assert set(extra) == {"norm_tanh_f1", "pgmgvce_pg_gan_l1"}
    assert extra["pgmgvce_pg_gan_l1"].lambda_l1 > 0 and extra["pgmgvce_pg_gan_l1"].lambda_pg > 0
    assert extra["norm_tanh_f1"].normalization == "tanh_f1"
    assert all(v.paper for v in cfg.variants if v.name not in extra)
    # an extra cannot claim to be the paper's
    bad = text.replace("norm_tanh_f1: {model: pgmgvce,", "norm_tanh_f1: {paper: true, model: pgmgvce,")
    with pytest.raises(ConfigError, match=r"extra_variants\.norm_tanh_f1: 'paper' is set by the section"):
        load_config_text(bad, "tiny")
    # study.variants selects, in file order; an unknown name is an error naming the key
    sel = text.replace("      variants: [pgmgvce_main, ratio_10to1, ratio_1to10, norm_zscore, norm_tanh, t1_only, t2_only, baseline_mmgsn,\n"
                       "                 pgmgvce_main_seed1, baseline_mmgsn_seed1, norm_tanh_f1, pgmgvce_pg_gan_l1]\n",
                       "      variants: [pgmgvce_pg_gan_l1, pgmgvce_main]\n")
    assert sel != text
    assert [v.name for v in load_config_text(sel, "tiny").variants] == ["pgmgvce_main", "pgmgvce_pg_gan_l1"]
    with pytest.raises(ConfigError, match=r"study\.variants: unknown variant\(s\) \['nope'\]"):
        load_config_text(sel.replace("[pgmgvce_pg_gan_l1, pgmgvce_main]", "[pgmgvce_main, nope]"), "tiny")
    dup = text.replace("extra_variants:\n", "extra_variants:\n  pgmgvce_main: {model: pgmgvce}\n")
    with pytest.raises(ConfigError, match="more than once"):
        load_config_text(dup, "tiny")


def test_pg_eps_scale_is_checked():
    text = (ROOT / "params.yaml").read_text()
    with pytest.raises(ConfigError, match=r"train\.pg_eps_scale"):
        load_config_text(text.replace("pg_eps_scale: slope", "pg_eps_scale: sigmoid"), "tiny")
