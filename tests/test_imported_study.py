"""A real (imported) cohort goes through the whole DAG: DICOM series -> `vce import` -> `vce run`.

An imported cohort has no `cohort.json`, no true motion (`motion.json`) and no synthesis
metadata: every step must cope with that, as it does for a user's patients (issue 11: the TRE
figures were NaN and kfp refused to serialise them).
"""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT
from test_import import write_dicom_series

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _as_dicom(tiny_cohort, src):
    """Every tiny patient as a PACS-like DICOM export (three series and a non-DICOM file), spacing kept."""
    for i, pdir in enumerate(sorted(p for p in tiny_cohort.iterdir() if p.is_dir())):
        imgs = {m: sitk.ReadImage(str(pdir / f"{m}.nii.gz")) for m in ("T1", "T2", "T1C")}
        for number, (m, desc) in enumerate((("T1", "AX T1 SE pre"), ("T2", "AX T2 TSE"), ("T1C", "AX T1 SE POST GAD")), 3):
            arr = sitk.GetArrayFromImage(imgs[m]).astype(np.int16)
            write_dicom_series(src / f"case_{i:02d}" / "study1" / f"s{number}", arr, desc, number,
                               f"MRN-{i:06d}", spacing=imgs[m].GetSpacing())
        (src / f"case_{i:02d}" / "study1" / "README.txt").write_text("not dicom")
    return src


def test_vce_run_on_an_imported_dicom_cohort_completes(tiny_cohort, tmp_path):
    src, raw, out = tmp_path / "pacs", tmp_path / "raw", tmp_path / "study"
    _as_dicom(tiny_cohort, src)
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(ROOT / ".venv" / "pycache"))
    vce = [sys.executable, "-m", "vce.cli"]
    imp = subprocess.run([*vce, "import", "--src", str(src), "--out", str(raw)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=600)
    assert imp.returncode == 0, imp.stderr[-3000:]
    assert not (raw / "cohort.json").exists() and not list(raw.rglob("motion*.json"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = subprocess.run([*vce, "run", "--profile", "tiny", "--data", str(raw), "--out", str(out),
                          "--tracking-uri", uri], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1500)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert "Traceback" not in log and "SerializeToJsonError" not in log
    summary = (out / "report" / "summary.md").read_text()
    assert "Table 1" in summary or "MAE" in summary, summary[:2000]
    assert (out / "report" / "metrics.json").is_file()
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("vce-study").experiment_id])
    assert runs and {r.info.status for r in runs} == {"FINISHED"}
    # the pseudonyms, never the source folders or DICOM identifiers, name the patients downstream
    for f in (out / "report").rglob("*"):
        if f.is_file() and f.suffix in {".md", ".csv", ".json", ".html"}:
            text = f.read_text(errors="ignore")
            assert "MRN-" not in text and "case_0" not in text and "DOE^" not in text, f
