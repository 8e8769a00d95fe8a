"""The compare step's figures (boxplots, case montage, profile, PSD ratio) and the HTML report."""

from __future__ import annotations

import base64
import pathlib

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from vce.image_grid import percentile_window
from vce.reporting import figures
from vce.reporting.figures import Case
from vce.reporting.html import Section, write_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = {"oracle": "reference", "pgmgvce_main": "main", "baseline_mmgsn": "baseline"}


def _assert_png(path: pathlib.Path, min_px: int = 100, max_px: int = 8000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 1_000 < len(data) < 10_000_000
    h, w = imread(str(path)).shape[:2]
    assert min_px <= h <= max_px and min_px <= w <= max_px
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # atomic: no temporary left


def _per_patient(seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, name in enumerate(MODELS):
        df = pd.DataFrame({"patient": ["P1", "P2", "P3"], "MAE": rng.uniform(5, 20, 3) + k,
                           "SSIM": rng.uniform(0.7, 0.9, 3), "PSNR": [np.nan, 25.0, 27.0]})
        out[name] = df
    out["oracle"]["SSIM"] = np.nan  # a model with no finite value of a metric
    return out


def _case(seed: int = 0, label: str = "P0007 z=9", tumour: bool = True) -> Case:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 1000, (32, 32))
    mask = np.zeros((32, 32), bool)
    if tumour:
        mask[10:18, 12:22] = True
    truth[mask] += 800
    preds = {m: truth + rng.normal(0, 50 * (k + 1), truth.shape) for k, m in enumerate(MODELS)}
    preds["baseline_mmgsn"][0, 0] = np.nan
    return Case(label, {"T1": rng.uniform(0, 500, (32, 32)), "T2": rng.uniform(0, 700, (32, 32))}, truth, preds, mask)


METRICS = [("MAE", "MAE (scanner units)"), ("SSIM", "SSIM (unitless)"), ("PSNR", "PSNR (dB)")]


def test_boxplots(tmp_path):
    out = figures.plot_boxplots(_per_patient(), METRICS, tmp_path / "box.png", roles=MODELS)
    assert out == tmp_path / "box.png"
    _assert_png(out)


@pytest.mark.parametrize("n_models", [1, 7])
def test_boxplots_any_number_of_models_without_roles(tmp_path, n_models):
    base = _per_patient()["pgmgvce_main"]
    data = {f"variant_{i}": base.assign(MAE=base["MAE"] + i) for i in range(n_models)}
    _assert_png(figures.plot_boxplots(data, METRICS[:1], tmp_path / "box.png"))


def test_boxplots_empty_input_gives_a_placeholder(tmp_path):
    _assert_png(figures.plot_boxplots({}, METRICS, tmp_path / "a.png"), min_px=50)
    _assert_png(figures.plot_boxplots(_per_patient(), [("missing", "missing")], tmp_path / "b.png"), min_px=50)


def test_model_colors_follow_roles():
    colors = figures.model_colors(["m", "b", "r1", "r2", "x"], {"m": "main", "b": "baseline", "r1": "reference",
                                                                 "r2": "reference", "x": ""})
    assert colors["m"] == "#d62728" and colors["b"] == "#1f77b4"
    assert colors["r1"] != colors["r2"]  # two references stay distinguishable
    assert len(set(colors.values())) == 5
    assert figures.role_family("main, ratio 10:1") == "main"
    assert figures.role_family("baseline") == "baseline"


def test_case_montage(tmp_path):
    cases = [_case(0), _case(1, "P0010 z=3", tumour=False), _case(2, "P0011 z=5")]
    _assert_png(figures.plot_case_montage(cases, tmp_path / "montage.png"))
    _assert_png(figures.plot_case_montage([], tmp_path / "empty.png"), min_px=50)


def test_montage_shares_one_window_per_row_and_one_error_window():
    cases = [_case(0), _case(1, "P2 z=1")]
    grid, titles = figures.montage_panels(cases)
    n_models = len(MODELS)
    assert titles[:3] == ["T1 (input)", "T2 (input)", "Ground truth T1C"]
    assert len(titles) == 3 + 2 * n_models
    err_windows = set()
    for case, row in zip(cases, grid):
        truth_window = percentile_window(case.truth)
        image_panels = row[2 : 3 + n_models]  # truth, then each prediction
        assert all((p.vmin, p.vmax) == truth_window for p in image_panels)
        assert all(p.overlay is not None and p.overlay.any() for p in row)  # tumour boundary on every panel
        err_windows |= {(p.vmin, p.vmax) for p in row[3 + n_models :]}
        assert all(p.cmap == "magma" for p in row[3 + n_models :])
    assert err_windows == {figures.error_window(cases)}
    lo, hi = figures.error_window(cases)
    assert lo == 0.0 and np.isfinite(hi) and hi > 0  # the NaN pixel is left out


def test_finite_window_ignores_nan():
    a = np.arange(100, dtype=float)
    b = a.copy()
    b[:3] = np.nan
    assert figures.finite_window(a) == percentile_window(a)
    assert all(np.isfinite(figures.finite_window(b)))
    assert figures.finite_window(np.full((4, 4), np.nan)) == (0.0, 1.0)


def test_case_rejects_mismatched_shapes():
    c = _case()
    with pytest.raises(ValueError, match="shape"):
        Case("x", c.inputs, c.truth, {"m": np.zeros((8, 8))}, c.tumour)


@pytest.mark.parametrize("tumour", [True, False])
def test_intensity_profile(tmp_path, tumour):
    case = _case(tumour=tumour)
    _assert_png(figures.plot_intensity_profile(case, tmp_path / "profile.png", roles=MODELS))
    assert figures._profile_row(case) == (14 if tumour else 16)


def _psd(nan: bool = False) -> dict[str, pd.DataFrame]:
    freq = np.linspace(0, 0.5, 17)
    clean = 1.0 / (1.0 + 50 * freq) ** 2
    out = {}
    for k, name in enumerate(MODELS):
        pred = clean * (1 - 0.3 * k * freq)
        if nan:
            pred[3] = np.nan
        out[name] = pd.DataFrame({"freq": freq, "pred": pred, "gt": clean + 1e-3, "gt_clean": clean})
    if nan:
        out["oracle"].loc[0, "gt_clean"] = 0.0  # a zero denominator: a gap, not a crash
    return out


@pytest.mark.parametrize("nan", [False, True])
def test_psd_ratio(tmp_path, nan):
    _assert_png(figures.plot_psd_ratio(_psd(nan), tmp_path / "psd.png", roles=MODELS))
    _assert_png(figures.plot_psd_ratio({}, tmp_path / "empty.png"), min_px=50)


def test_existing_figures_still_work(tmp_path):
    overview = pd.DataFrame({"role": ["main", "baseline"], "MAE mean": [10.0, 12.0], "MAE sd": [1.0, np.nan],
                             "SSIM mean": [0.8, 0.7], "SSIM sd": [0.01, 0.02]}, index=["a", "b"])
    _assert_png(figures.plot_metrics_by_variant(overview, tmp_path / "m.png"))


# ----------------------------------------------------------------------------------------- HTML


def _sections(tmp_path) -> tuple[list[Section], list[pathlib.Path]]:
    figs = [figures.plot_boxplots(_per_patient(), METRICS, tmp_path / "box.png", roles=MODELS),
            figures.plot_psd_ratio(_psd(), tmp_path / "psd.png", roles=MODELS)]
    t1 = pd.DataFrame({"MAE": ["8.5 ± 0.4", "9.1 ± 0.5"], "n": [3, 3]}, index=["main", "<b>x</b>"])
    t1.attrs.update(title="Table 1: accuracy", description="mean ± sd over <patients>")
    t2 = pd.DataFrame({"metric": ["SSIM"], "value": [0.81234567], "note": ["<b>x</b>"]})
    t2.attrs["title"] = "Table 2: texture & more"
    sections = [
        Section("Summary", text="First <paragraph> & more.\n\nSecond paragraph.",
                items={"params": "abc123", "data version": "v1 <dvc>", "code version": "deadbeef"},
                verdicts=[{"claim": "main beats baseline", "status": "reproduced", "evidence": "p=0.01"},
                          {"claim": "SSIM gap", "status": "not reproduced", "evidence": "p=0.4"},
                          {"claim": "texture", "status": "inconclusive", "evidence": "n=3"}]),
        Section("Tables", tables=[t1, t2], figures=figs),
    ]
    return sections, figs


def test_html_is_self_contained_and_escaped(tmp_path):
    sections, figs = _sections(tmp_path)
    out = write_html(tmp_path / "report.html", title="VCE <study>", sections=sections)
    assert out == tmp_path / "report.html"
    text = out.read_text(encoding="utf-8")
    for banned in ("http://", "https://", "<script", "<link"):
        assert banned not in text.lower()
    assert "Table 1: accuracy" in text and "Table 2: texture &amp; more" in text
    assert "mean ± sd over &lt;patients&gt;" in text
    assert text.count('src="data:image/png;base64,') == len(figs)
    for fig in figs:
        assert base64.b64encode(fig.read_bytes()).decode() in text
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text  # cells and index escaped
    assert "First &lt;paragraph&gt; &amp; more." in text and text.count("<p>") >= 2
    assert "VCE &lt;study&gt;" in text and "v1 &lt;dvc&gt;" in text
    assert 'class="status ok"' in text and 'class="status bad"' in text and 'class="status unsure"' in text
    assert "0.8123" in text  # floats shown to 4 significant digits
    assert "position: sticky" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_html_failure_leaves_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("previous report")
    with pytest.raises(FileNotFoundError):
        write_html(target, title="t", sections=[Section("s", figures=[tmp_path / "missing.png"])])
    assert target.read_text() == "previous report"

    real = pathlib.Path.write_text

    def half_then_fail(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_html(target, title="t", sections=[Section("s", text="hello")])
    monkeypatch.undo()
    assert target.read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_html_rejects_non_image_figures(tmp_path):
    svg = tmp_path / "x.svg"
    svg.write_text("<svg><script>alert(1)</script></svg>")
    with pytest.raises(ValueError, match="PNG"):
        write_html(tmp_path / "r.html", title="t", sections=[Section("s", figures=[svg])])
    assert not (tmp_path / "r.html").exists()
