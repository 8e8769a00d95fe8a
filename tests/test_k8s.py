import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT


def _rendered() -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "base")], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_base_renders():
    docs = _rendered()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "vce"), ("Deployment", "mlflow"), ("Service", "mlflow"), ("PersistentVolumeClaim", "vce-data"),
            ("ConfigMap", "mlflow-auth-config")} <= kinds
    assert all(d["metadata"].get("namespace", "vce") == "vce" for d in docs)


def test_mlflow_server_has_auth_on_with_credentials_from_a_secret():
    """The cluster's MLflow runs MLflow's basic-auth app; the admin user and Flask secret are
    secretKeyRefs to the Secret the pipeline reads too (pipelines/vce_study.py), never inlined; no
    Secret (with a password in it) is part of the manifests."""
    from pipelines.vce_study import MLFLOW_SECRET, MLFLOW_SECRET_ENV

    docs = [d for f in sorted((ROOT / "k8s" / "base").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert not [d for d in docs if d["kind"] == "Secret"]
    deploy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"] and "--app-name=basic-auth" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key")):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"] == {"name": MLFLOW_SECRET, "key": key}, name
    assert set(MLFLOW_SECRET_ENV) <= {"username", "password"}  # the pipeline reads keys the server's Secret has
    # the auth config: a mounted ConfigMap, its user database on the persistent store, no password in it
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    mount = next(m for m in c["volumeMounts"] if ini_path.startswith(m["mountPath"] + "/"))
    vol = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == vol["configMap"]["name"])
    ini = cm["data"][ini_path.rsplit("/", 1)[1]]
    assert "database_uri = sqlite:////store/" in ini and "admin_password" not in ini
    assert any(m["mountPath"] == "/store" for m in c["volumeMounts"])
