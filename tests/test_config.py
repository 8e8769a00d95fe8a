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
        ("on_failure: exclude", "on_failure: ignore", r"profiles\.tiny\.register\.on_failure must be one of \('exclude', 'stop'\) \(got 'ignore'\)"),
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


# --------------------------------------------------------------------------- the range table, YAML booleans, image size

def _checked_classes():
    from vce.config import SECTIONS

    return [*SECTIONS.values(), Variant]


def _numeric(hint) -> bool:
    import typing

    if typing.get_origin(hint) is tuple:
        return all(_numeric(a) for a in typing.get_args(hint) if a is not Ellipsis)
    return hint in (int, float)


def test_every_numeric_setting_has_a_range_rule():
    """One table (vce.config.RANGES) holds the range of every int / float field of every section."""
    import dataclasses
    import typing

    from vce.config import RANGES

    for cls in _checked_classes():
        hints = typing.get_type_hints(cls)
        numeric = {f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])}
        assert numeric, cls
        assert set(RANGES[cls.section]) == numeric, (cls.section, numeric ^ set(RANGES[cls.section]))


def _outside_and_inside(rule, is_int: bool):
    """Values just outside and just inside ``rule`` at each of its bounds."""
    step = 1 if is_int else 0.5
    cases = []
    if rule.low is not None:
        cases.append((rule.low if rule.low_open else rule.low - step, rule.low + (step if rule.low_open else 0)))
    if rule.high is not None:
        inside = rule.high - (step if is_int else 1e-3) if rule.high_open else rule.high
        cases.append((rule.high if rule.high_open else rule.high + step, inside))
    return [(type_(o), type_(i)) for o, i in cases for type_ in [int if is_int else float]]


def _range_cases():
    import dataclasses
    import typing

    from vce.config import RANGES

    for cls in _checked_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in RANGES[cls.section]:
                continue
            hint = hints[f.name]
            is_tuple = typing.get_origin(hint) is tuple
            elem = typing.get_args(hint)[0] if is_tuple else hint
            for outside, inside in _outside_and_inside(RANGES[cls.section][f.name], elem is int):
                yield pytest.param(cls, f.name, is_tuple, outside, inside, id=f"{cls.section}.{f.name}={outside}")


def _build_with(cls, key, is_tuple, value):
    import dataclasses

    kw = {"name": "v"} if cls is Variant else {}
    if is_tuple:
        default = next(f for f in dataclasses.fields(cls) if f.name == key).default
        value = [value] * len(default)
    return cls(**kw, **{key: value})


@pytest.mark.parametrize("cls, key, is_tuple, outside, inside", list(_range_cases()))
def test_each_range_rule_refuses_outside_and_accepts_its_bound(cls, key, is_tuple, outside, inside):
    where = "variants.v" if cls is Variant else cls.section
    with pytest.raises(ConfigError, match=rf"^{re.escape(where)}\.{key} (every value )?must be "):
        _build_with(cls, key, is_tuple, outside)
    built = _build_with(cls, key, is_tuple, inside)
    assert getattr(built, key) == (tuple([inside] * len(getattr(built, key))) if is_tuple else inside)


def test_numbers_of_the_wrong_type_are_refused_for_every_numeric_key():
    for cls in _checked_classes():
        from vce.config import RANGES

        for key in RANGES[cls.section]:
            with pytest.raises(ConfigError, match=rf"\.{key} must be (an integer|a finite number|a list)"):
                _build_with(cls, key, False, "four")


@pytest.mark.parametrize("old, new, match", [
    ("iterations: 4\n", "iterations: 0\n", r"^params\.yaml:profiles\.tiny\.train\.iterations must be >= 1 \(got 0\)$"),
    ("lr: 2.0e-4\n", "lr: 0\n", r"profiles\.tiny\.train\.lr must be > 0 \(got 0\)"),
    ("beta1: 0.5\n", "beta1: 1.0\n", r"profiles\.tiny\.train\.beta1 must be in \[0\.0, 1\.0\) \(got 1\.0\)"),
    ("test_ratio: 0.125\n", "test_ratio: 0\n", r"profiles\.tiny\.split\.test_ratio must be in \(0\.0, 1\.0\) \(got 0\)"),
    ("folds: 0                 # k-fold off\n      fold: 0", "folds: 1\n      fold: 0",
     r"profiles\.tiny\.split\.folds must be 0 \(hold-out by test_ratio\) or a number of folds >= 2 \(got 1\)"),
    ("folds: 0                 # k-fold off\n      fold: 0", "folds: 3\n      fold: 3",
     r"profiles\.tiny\.split\.fold must be in \[0, 2\] for 3 folds \(got 3\)"),
    ("histogram_bins: 24", "histogram_bins: 1", r"profiles\.tiny\.register\.histogram_bins must be >= 2 \(got 1\)"),
    ("shrink_factors: [1]\n      smoothing", "shrink_factors: [0]\n      smoothing",
     r"profiles\.tiny\.register\.shrink_factors every value must be >= 1 \(got \[0\]\)"),
    ("pgmgvce_depth: 2 ", "pgmgvce_depth: 7 ", r"profiles\.tiny\.train\.pgmgvce_depth must be in \[1, 6\] \(got 7\)"),
])
def test_ranges_named_at_load(old, new, match):
    with pytest.raises(ConfigError, match=match):
        load_config_text(_tiny_text(old, new), "tiny", source="params.yaml")


def test_unquoted_off_from_dvc_exp_run_is_amp_off():
    """``dvc exp run -S`` rewrites params.yaml with ``amp: off`` unquoted, which YAML reads as false."""
    text = PARAMS.replace('amp: "off"', "amp: off")
    assert text != PARAMS
    for profile in ("tiny", "demo", "paper"):
        assert load_config_text(text, profile).train.amp == "off"
    from vce.config import TrainConfig

    assert TrainConfig(amp=False).amp == "off"
    # params.yaml is read with YAML 1.2 scalars (as DVC writes it): `on` is the string 'on', not a mode
    with pytest.raises(ConfigError, match=r"train\.amp must be one of \('off', 'bf16', 'fp16'\) \(got 'on'\)"):
        load_config_text(_tiny_text('amp: "off"', "amp: on"), "tiny")
    # and `off` stays a string, an error for a setting without an off choice
    with pytest.raises(ConfigError, match=r"train\.keep must be one of \('last', 'best'\) \(got 'off'\)"):
        load_config_text(_tiny_text("keep: last", "keep: off"), "tiny")


def test_image_size_must_survive_the_generators_halvings():
    with pytest.raises(ConfigError) as info:
        load_config_text(_tiny_text("image_size: 48 ", "image_size: 30 "), "tiny", source="params.yaml")
    assert str(info.value) == (
        "params.yaml:profiles.tiny.split.image_size must be a multiple of 4 and at least 8 (got 30): the mmgsn "
        "generator halves it 2 times (its fixed architecture); e.g. 28 or 32 would work")
    assert load_config_text(_tiny_text("image_size: 48 ", "image_size: 40 "), "tiny").split.image_size == 40
    deeper = _tiny_text("pgmgvce_depth: 2 ", "pgmgvce_depth: 3 ")
    assert load_config_text(deeper, "tiny").split.image_size == 48
    with pytest.raises(ConfigError, match=r"split\.image_size must be a multiple of 8 and at least 16 \(got 36\): the "
                                          r"pgmgvce generator halves it 3 times \(train\.pgmgvce_depth = 3\); e\.g\. 32 or 40"):
        load_config_text(deeper.replace("image_size: 48 ", "image_size: 36 "), "tiny")


def test_image_size_rule_is_the_models_rule():
    """For every size and depth the config accepts exactly what the generators (and the PatchGAN) run."""
    import dataclasses

    import torch

    from vce.config import MODELS, TrainConfig, image_size_problem
    from vce.models.factory import build_discriminator, build_generator

    for depth in (1, 2, 3):
        train = dataclasses.replace(TrainConfig(), pgmgvce_depth=depth)
        for model in MODELS:
            g = build_generator(model, 2, 1, **({"depth": depth} if model == "pgmgvce" else {})).eval()
            for size in range(8, 50):
                accepted = image_size_problem(size, train, [model]) is None
                try:
                    with torch.no_grad():
                        g(torch.zeros(1, 2, size, size))
                        build_discriminator(2, 1, image_size=size)(torch.zeros(1, 2, size, size), torch.zeros(1, 1, size, size))
                    runs = True
                except ValueError:
                    runs = False
                assert accepted == runs, (model, depth, size)
