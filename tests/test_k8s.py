import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_base_renders():
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "base")], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "vce"), ("Deployment", "mlflow"), ("Service", "mlflow"), ("PersistentVolumeClaim", "vce-data")} <= kinds
    assert all(d["metadata"].get("namespace", "vce") == "vce" for d in docs)
