"""Comparison tables and report from fake evaluation directories with known numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vce.config import Variant
from vce.io.errors import VCEInputError
from vce.metrics import METRIC_KEYS
from vce.reporting import ablations, build_tables, compare, derive_roles, figures, format_console, write_report
from vce.reporting.ablations import ABLATIONS, Ablation, ratio_label
from vce.reporting.rendering import format_mean_sd
from vce.reporting.stats import paired_pvalues

PATIENTS = ["P01", "P02", "P03", "P04", "P05", "P06"]
MAIN = "pgmgvce_main"


def study_variants(prefix: str = "") -> list[Variant]:
    """The study's 8 variants (as in params.yaml); ``prefix`` renames all but the main one."""
    p = prefix
    return [
        Variant("pgmgvce_main"),
        Variant(f"{p}ratio_10to1", lambda_pg=10.0, lambda_gan=1.0),
        Variant(f"{p}ratio_1to10", lambda_pg=1.0, lambda_gan=10.0),
        Variant(f"{p}norm_zscore", normalization="zscore"),
        Variant(f"{p}norm_tanh", normalization="tanh"),
        Variant(f"{p}t1_only", modalities=("T1",)),
        Variant(f"{p}t2_only", modalities=("T2",)),
        Variant(f"{p}baseline_mmgsn", model="mmgsn", lambda_pg=0.0, lambda_gan=1.0, lambda_l1=100.0),
    ]


def patient_values(k: int) -> dict[str, list[float]]:
    """Distinct, known per-patient values for the k-th variant."""
    rng = np.random.default_rng(100 + k)
    n = len(PATIENTS)
    out = {
        "mae": list(50 + 5 * k + rng.uniform(0, 10, n)),
        "mse": list(9000 + 300 * k + rng.uniform(0, 2000, n)),
        "ssim": list(0.6 + 0.01 * k + rng.uniform(0, 0.1, n)),
    }
    for j, t in enumerate(("tmsvpmi", "tavpmi", "tfpmi", "vfpmi")):
        out[t] = list(0.05 * (j + 1) + 0.01 * k + rng.uniform(0, 0.05, n))
        out[f"gt_{t}"] = list(0.06 * (j + 1) + rng.uniform(0, 0.05, n))
    return out


def write_eval_dir(d: Path, values: dict[str, list[float]], patients=PATIENTS, shuffle: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"patient": patients, **values})[["patient", *METRIC_KEYS]]
    if shuffle:  # row order must not matter: pairing is by patient id
        df = df.iloc[::-1]
    df.to_csv(d / "metrics_patients.csv", index=False)
    slices = pd.concat([df.assign(slice=s) for s in range(2)])[["patient", "slice", *METRIC_KEYS]]
    slices.to_csv(d / "metrics_slices.csv", index=False)
    return d


@pytest.fixture
def study(tmp_path):
    variants = study_variants()
    values = {v.name: patient_values(k) for k, v in enumerate(variants)}
    dirs = {
        v.name: write_eval_dir(tmp_path / "eval" / v.name, values[v.name], shuffle=(k % 2 == 1))
        for k, v in enumerate(variants)
    }
    return variants, values, dirs


# --------------------------------------------------------------------------- statistics


def test_table1_matches_numpy_and_scipy(study):
    variants, values, dirs = study
    t1 = build_tables(dirs, variants, main=MAIN)["table1_accuracy"]
    assert list(t1.index) == ["MAE", "MSE", "SSIM"]
    for key, row in (("mae", "MAE"), ("mse", "MSE"), ("ssim", "SSIM")):
        main = np.array(values["pgmgvce_main"][key])
        base = np.array(values["baseline_mmgsn"][key])
        assert t1.loc[row, "PGMGVCE mean"] == pytest.approx(main.mean())
        assert t1.loc[row, "PGMGVCE sd"] == pytest.approx(main.std(ddof=1))
        assert t1.loc[row, "Li et al. MMgSN-Net mean"] == pytest.approx(base.mean())
        assert t1.loc[row, "Li et al. MMgSN-Net sd"] == pytest.approx(base.std(ddof=1))
        # the baseline's rows are stored in reverse order: pairing must be by patient id
        assert t1.loc[row, "p_wilcoxon"] == pytest.approx(stats.wilcoxon(main, base).pvalue)
        assert t1.loc[row, "p_ttest"] == pytest.approx(stats.ttest_rel(main, base).pvalue)
        assert t1.loc[row, "n"] == len(PATIENTS)
    assert t1.attrs["variants"] == {"PGMGVCE": "pgmgvce_main", "Li et al. MMgSN-Net": "baseline_mmgsn"}


def test_table2_ground_truth_from_main(study):
    variants, values, dirs = study
    t2 = build_tables(dirs, variants, main=MAIN)["table2_texture"]
    assert list(t2.index) == ["TMSVPMI", "TAVPMI", "TFPMI", "VFPMI"]
    for key in ("tmsvpmi", "tavpmi", "tfpmi", "vfpmi"):
        row = key.upper()
        assert t2.loc[row, "Ground truth mean"] == pytest.approx(np.mean(values["pgmgvce_main"][f"gt_{key}"]))
        assert t2.loc[row, "PGMGVCE mean"] == pytest.approx(np.mean(values["pgmgvce_main"][key]))
        assert t2.loc[row, "Li et al. MMgSN-Net sd"] == pytest.approx(np.std(values["baseline_mmgsn"][key], ddof=1))
        p = stats.ttest_rel(values["pgmgvce_main"][key], values["baseline_mmgsn"][key]).pvalue
        assert t2.loc[row, "p_ttest"] == pytest.approx(p)


def test_modality_ratios_per_patient_by_hand(tmp_path):
    variants = [Variant("main"), Variant("only1", modalities=("T1",))]
    base = patient_values(0)
    main_vals = {**base, "mae": [10.0, 20.0], "mse": [100.0, 400.0], "ssim": [0.8, 0.5]}
    t1_vals = {**base, "mae": [15.0, 22.0], "mse": [150.0, 400.0], "ssim": [0.4, 0.5]}
    main_vals = {k: v[:2] for k, v in main_vals.items()}
    t1_vals = {k: v[:2] for k, v in t1_vals.items()}
    dirs = {
        "main": write_eval_dir(tmp_path / "main", main_vals, patients=["A", "B"]),
        # reversed patient order in the file
        "only1": write_eval_dir(tmp_path / "only1", t1_vals, patients=["A", "B"], shuffle=True),
    }
    tables = build_tables(dirs, variants, main="main")
    mod = tables["ablation_modality"]
    assert list(mod.index) == ["T1 only"]
    # MAER per patient: (15-10)/10 = 0.5, (22-20)/20 = 0.1 -> mean 0.3, sd sqrt(0.08)
    # (the ratio of the means, 37/30 - 1 = 0.2333, would differ)
    assert mod.loc["T1 only", "MAER mean"] == pytest.approx(0.3)
    assert mod.loc["T1 only", "MAER sd"] == pytest.approx(math.sqrt(0.08))
    # MSER: 0.5 and 0.0 ; SSIMR: (0.4-0.8)/0.8 = -0.5 and 0.0
    assert mod.loc["T1 only", "MSER mean"] == pytest.approx(0.25)
    assert mod.loc["T1 only", "SSIMR mean"] == pytest.approx(-0.25)
    assert mod.loc["T1 only", "SSIMR sd"] == pytest.approx(np.std([-0.5, 0.0], ddof=1))
    assert mod.loc["T1 only", "n"] == 2
    # no baseline, no ratio/normalisation variants: those tables are left out
    assert set(tables) == {"ablation_modality", "variants_overview"}


def test_modality_pairs_only_common_patients(tmp_path):
    variants = [Variant("main"), Variant("only2", modalities=("T2",))]
    v = patient_values(0)
    dirs = {
        "main": write_eval_dir(tmp_path / "main", {k: x[:3] for k, x in v.items()}, patients=["A", "B", "C"]),
        "only2": write_eval_dir(tmp_path / "only2", {k: x[:2] for k, x in v.items()}, patients=["C", "A"]),
    }
    mod = build_tables(dirs, variants, main="main")["ablation_modality"]
    assert mod.loc["T2 only", "n"] == 2


def test_ablation_tables(study):
    variants, values, dirs = study
    tables = build_tables(dirs, variants, main=MAIN)
    ratio = tables["ablation_ratio"]
    assert list(ratio.index) == ["10:1", "1:1", "1:10"]
    assert list(ratio["variant"]) == ["ratio_10to1", "pgmgvce_main", "ratio_1to10"]
    assert ratio.loc["10:1", "MAE mean"] == pytest.approx(np.mean(values["ratio_10to1"]["mae"]))
    assert ratio.loc["1:10", "SSIM sd"] == pytest.approx(np.std(values["ratio_1to10"]["ssim"], ddof=1))
    norm = tables["ablation_normalization"]
    assert list(norm.index) == ["zscore", "sigmoid", "tanh"]
    assert list(norm["variant"]) == ["norm_zscore", "pgmgvce_main", "norm_tanh"]
    assert norm.loc["tanh", "MSE mean"] == pytest.approx(np.mean(values["norm_tanh"]["mse"]))
    mod = tables["ablation_modality"]
    assert list(mod.index) == ["T1 only", "T2 only"]
    main_mae = np.array(values["pgmgvce_main"]["mae"])
    expected = (np.array(values["t2_only"]["mae"]) - main_mae) / main_mae
    assert mod.loc["T2 only", "MAER mean"] == pytest.approx(expected.mean())
    assert mod.loc["T2 only", "MAER sd"] == pytest.approx(expected.std(ddof=1))


# --------------------------------------------------------------------------- roles


def test_roles_from_attributes_not_names():
    roles = derive_roles(study_variants(prefix="x_"), main="pgmgvce_main")
    assert roles.baseline == "x_baseline_mmgsn"
    assert roles.ratio == {"10:1": "x_ratio_10to1", "1:1": "pgmgvce_main", "1:10": "x_ratio_1to10"}
    assert roles.normalization == {"zscore": "x_norm_zscore", "sigmoid": "pgmgvce_main", "tanh": "x_norm_tanh"}
    assert roles.modality == {"T1 only": "x_t1_only", "T2 only": "x_t2_only", "T1 + T2": "pgmgvce_main"}
    assert roles.of("x_norm_tanh") == "normalization tanh"
    assert roles.of("pgmgvce_main") == "main"


def test_variant_differing_in_two_attributes_has_no_ablation_role():
    vs = [Variant("m"), Variant("odd", normalization="tanh", modalities=("T1",)), Variant("l1", lambda_l1=5.0)]
    roles = derive_roles(vs, main="m")
    assert roles.normalization == {} and roles.modality == {} and roles.ratio == {}
    assert roles.baseline is None
    assert roles.of("odd") == ""


def test_renamed_variants_and_main(tmp_path):
    variants = study_variants(prefix="renamed_")
    variants[0] = Variant("my_model")
    dirs = {v.name: write_eval_dir(tmp_path / v.name, patient_values(k)) for k, v in enumerate(variants)}
    tables = build_tables(dirs, variants, main="my_model")
    assert set(tables) == {
        "table1_accuracy", "table2_texture", "ablation_ratio", "ablation_normalization",
        "ablation_modality", "variants_overview",
    }  # fmt: skip
    assert tables["table1_accuracy"].attrs["variants"]["Li et al. MMgSN-Net"] == "renamed_baseline_mmgsn"
    assert list(tables["ablation_ratio"]["variant"]) == ["renamed_ratio_10to1", "my_model", "renamed_ratio_1to10"]


def test_missing_variants_omit_tables(study):
    variants, values, dirs = study
    partial = {k: v for k, v in dirs.items() if k not in ("norm_zscore", "norm_tanh", "baseline_mmgsn")}
    tables = build_tables(partial, variants, main=MAIN)
    assert "ablation_normalization" not in tables
    assert "table1_accuracy" not in tables and "table2_texture" not in tables
    assert {"ablation_ratio", "ablation_modality", "variants_overview"} <= set(tables)
    assert list(tables["variants_overview"].index) == [v.name for v in variants if v.name in partial]
    # one normalisation variant is enough for the table (with the main variant)
    partial["norm_tanh"] = dirs["norm_tanh"]
    assert list(build_tables(partial, variants, main=MAIN)["ablation_normalization"].index) == ["sigmoid", "tanh"]


def test_main_variant_required(study):
    variants, values, dirs = study
    with pytest.raises(VCEInputError, match="nope"):
        build_tables(dirs, variants, main="nope")
    without_main = {k: v for k, v in dirs.items() if k != "pgmgvce_main"}
    with pytest.raises(VCEInputError, match="pgmgvce_main"):
        build_tables(without_main, variants, main=MAIN)


def test_main_is_a_required_keyword(study):
    variants, values, dirs = study
    with pytest.raises(TypeError, match="main"):
        build_tables(dirs, variants)
    with pytest.raises(TypeError, match="main"):
        derive_roles(variants)


def test_new_ablation_is_one_entry(study, tmp_path, monkeypatch):
    """Appending one Ablation to ABLATIONS gives its role, its table, its CSV and its summary section."""
    variants, values, dirs = study
    assert "ablation_l1" not in build_tables(dirs, variants, main=MAIN)
    l1, l1_values = Variant("l1_heavy", lambda_l1=50.0), patient_values(len(variants))
    variants = [*variants, l1]
    dirs = {**dirs, l1.name: write_eval_dir(tmp_path / "eval" / l1.name, l1_values)}
    entry = Ablation(
        name="l1",
        fields=frozenset({"lambda_l1"}),
        title="Ablation - L1 weight",
        description="MAE, MSE, SSIM for each lambda_l1 (other settings as {main}).",
        label=lambda v: f"lambda_l1 = {v.lambda_l1:g}",
        paper="Not in the paper.",
        paper_values={"lambda_l1 = 0": {"MAE": "1.0 ± 0.1"}},
        order=lambda v: v.lambda_l1,
    )
    monkeypatch.setattr(ablations, "ABLATIONS", (*ABLATIONS, entry))
    roles = derive_roles(variants, main=MAIN)
    assert roles.l1 == {"lambda_l1 = 0": MAIN, "lambda_l1 = 50": "l1_heavy"}
    assert roles.of("l1_heavy") == "l1 lambda_l1 = 50"
    out = tmp_path / "report"
    tables = compare(dirs, variants, out, main=MAIN)
    t = tables["ablation_l1"]
    assert list(t.index) == ["lambda_l1 = 0", "lambda_l1 = 50"] and t.index.name == "l1"
    assert t.loc["lambda_l1 = 50", "MAE mean"] == pytest.approx(np.mean(l1_values["mae"]))
    assert t.attrs["description"] == f"MAE, MSE, SSIM for each lambda_l1 (other settings as {MAIN})."
    # in report order: after the declared ablations, before the overview
    assert list(tables)[-2:] == ["ablation_l1", "variants_overview"]
    assert (out / "ablation_l1.csv").is_file()
    summary = (out / "summary.md").read_text()
    assert summary.index("Ablation - single modality") < summary.index("Ablation - L1 weight") < summary.index("All variants")
    assert "Paper (Cheng et al. 2024) for comparison. Not in the paper." in summary and "1.0 ± 0.1" in summary
    assert tables["variants_overview"].loc["l1_heavy", "role"] == "l1 lambda_l1 = 50"


def test_ablation_fields_must_be_variant_fields():
    with pytest.raises(ValueError, match="lambda_typo"):
        Ablation(name="x", fields=frozenset({"lambda_typo"}), title="t", description="d", label=str, paper="p", order=str)


def test_ratio_labels():
    assert ratio_label(10, 1) == "10:1"
    assert ratio_label(1, 10) == "1:10"
    assert ratio_label(1, 1) == "1:1"
    assert ratio_label(2, 2) == "1:1"
    assert ratio_label(5, 2) == "2.5:1"
    assert ratio_label(0, 1) == "0:1"


# --------------------------------------------------------------------------- bad input


def test_missing_file_names_it(study):
    variants, values, dirs = study
    (dirs["t1_only"] / "metrics_patients.csv").unlink()
    with pytest.raises(VCEInputError, match=r"t1_only.*metrics_patients\.csv"):
        build_tables(dirs, variants, main=MAIN)


def test_missing_slices_file_names_it(study):
    variants, values, dirs = study
    (dirs["norm_tanh"] / "metrics_slices.csv").unlink()
    with pytest.raises(VCEInputError, match=r"norm_tanh.*metrics_slices\.csv"):
        build_tables(dirs, variants, main=MAIN)


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "cannot read"),
        ("patient,mae\nP01,1.0\n", "lacks column"),
        (None, "not numeric"),
        (None, "duplicate"),
    ],
)
def test_unreadable_file_names_it(study, content, match):
    variants, values, dirs = study
    path = dirs["baseline_mmgsn"] / "metrics_patients.csv"
    if content is None:
        df = pd.read_csv(path, dtype={"patient": str})
        if match == "not numeric":
            df["mae"] = df["mae"].astype(object)
            df.loc[0, "mae"] = "abc"
        else:
            df.loc[1, "patient"] = df.loc[0, "patient"]
        df.to_csv(path, index=False)
    else:
        path.write_text(content)
    with pytest.raises(VCEInputError, match=match) as info:
        build_tables(dirs, variants, main=MAIN)
    assert str(path) in str(info.value)


def test_paired_pvalues_not_computable():
    assert all(math.isnan(p) for p in paired_pvalues([1.0], [2.0]))
    assert all(math.isnan(p) for p in paired_pvalues([1.0, 2.0], [1.0, 2.0]))
    pw, pt = paired_pvalues([1.0, 2.0, 4.0], [1.5, 2.2, 3.0])
    assert 0 < pw <= 1 and 0 < pt <= 1


def test_single_patient_sd_is_nan(tmp_path):
    variants = [Variant("main"), Variant("base", model="mmgsn")]
    v = {k: x[:1] for k, x in patient_values(0).items()}
    dirs = {n.name: write_eval_dir(tmp_path / n.name, v, patients=["A"]) for n in variants}
    t1 = build_tables(dirs, variants, main="main")["table1_accuracy"]
    assert math.isnan(t1.loc["MAE", "PGMGVCE sd"])
    assert math.isnan(t1.loc["MAE", "p_wilcoxon"]) and math.isnan(t1.loc["MAE", "p_ttest"])
    assert "n/a" in format_console({"table1_accuracy": t1})


# --------------------------------------------------------------------------- report

EXPECTED_FILES = {
    *(f"{n}.{ext}" for n in (
        "table1_accuracy", "table2_texture", "ablation_ratio", "ablation_normalization",
        "ablation_modality", "variants_overview",
    ) for ext in ("csv", "md")),
    "summary.md",
    "metrics_by_variant.png",
    "texture.png",
}  # fmt: skip


def test_compare_writes_all_files(study, tmp_path):
    variants, values, dirs = study
    out = tmp_path / "report"
    tables = compare(dirs, variants, out, main=MAIN)
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    # CSVs hold the numeric mean/sd columns
    t1 = pd.read_csv(out / "table1_accuracy.csv", index_col=0)
    np.testing.assert_allclose(t1["PGMGVCE mean"], tables["table1_accuracy"]["PGMGVCE mean"])
    assert "PGMGVCE sd" in t1.columns and "p_wilcoxon" in t1.columns
    # markdown shows "mean ± sd" strings
    md = (out / "table1_accuracy.md").read_text()
    m = tables["table1_accuracy"].loc["MAE"]
    assert format_mean_sd(m["PGMGVCE mean"], m["PGMGVCE sd"]) in md
    summary = (out / "summary.md").read_text()
    for name in ("Table 1", "Table 2", "ratio", "normalisation", "single modality"):
        assert name in summary
    assert "8.72 ± 0.48" in summary and "0.0811 ± 0.005" in summary  # paper reference values
    assert (out / "texture.png").read_bytes()[:4] == b"\x89PNG"
    # no temporary leftovers beside the report
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_report_is_atomic(study, tmp_path, monkeypatch):
    variants, values, dirs = study
    tables = build_tables(dirs, variants, main=MAIN)

    def boom(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "plot_texture", boom)
    out = tmp_path / "report"
    with pytest.raises(RuntimeError, match="figure failed"):
        write_report(tables, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # a failed rewrite leaves the previous complete report untouched
    monkeypatch.undo()
    write_report(tables, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(figures, "plot_metrics_by_variant", boom)
    with pytest.raises(RuntimeError):
        write_report({k: v for k, v in tables.items() if k != "ablation_ratio"}, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_report_without_baseline_skips_texture_figure(study, tmp_path):
    variants, values, dirs = study
    dirs = {k: v for k, v in dirs.items() if k != "baseline_mmgsn"}
    out = tmp_path / "r"
    compare(dirs, variants, out, main=MAIN)
    names = {p.name for p in out.iterdir()}
    assert "texture.png" not in names and "table1_accuracy.csv" not in names
    assert "metrics_by_variant.png" in names and "summary.md" in names


def test_format_console(study):
    variants, values, dirs = study
    tables = build_tables(dirs, variants, main=MAIN)
    text = format_console(tables)
    for df in tables.values():
        assert df.attrs["title"] in text
    assert "±" in text and "T1 only" in text and "10:1" in text


def test_format_mean_sd():
    assert format_mean_sd(8.5634, 0.4512) == "8.563 ± 0.451"
    assert format_mean_sd(0.12345, 0.0221) == "0.1235 ± 0.0221"
    assert format_mean_sd(12843.2, 1456.6) == "12843 ± 1457"
    assert format_mean_sd(1.0, float("nan")) == "1.000 ± n/a"
