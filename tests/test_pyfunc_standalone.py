"""The logged MLflow model is self-contained: it carries the ``vce`` source (``code_paths``) and a
requirements.txt that pins every distribution its code imports, so it loads and predicts in an
empty virtualenv that has only those requirements, without the repository or an installed ``vce``."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from vce import tracking

PYFUNC = ROOT / "src" / "vce" / "mlflow_pyfunc.py"


def _norm(dist: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _vce_entry_modules() -> list[str]:
    """The ``vce`` modules mlflow_pyfunc.py imports (at module level or inside its methods)."""
    tree = ast.parse(PYFUNC.read_text())
    return sorted({n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                   and n.module.split(".")[0] == "vce"})


_IMPORTED_DISTRIBUTIONS = r"""
import ast, importlib, json, sys
from importlib.metadata import packages_distributions
for m in sys.argv[2:]:
    importlib.import_module(m)
dists, out = packages_distributions(), set()
files = [sys.argv[1]] + [getattr(mod, "__file__", None) or "" for name, mod in list(sys.modules.items())
                         if name == "vce" or name.startswith("vce.")]
for src in files:
    for n in ast.walk(ast.parse(open(src).read())) if src.endswith(".py") else []:
        names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
            [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else []
        out.update(tuple(dists[x.split(".")[0]]) for x in names if x.split(".")[0] in dists)
print(json.dumps(sorted(out)))  # per imported name, the distributions that provide it
"""


def test_requirements_cover_every_distribution_the_model_code_imports():
    """What mlflow_pyfunc.py and the vce modules it loads import (module level and inside functions,
    e.g. nibabel in vce.io.nifti) is listed in MODEL_DISTRIBUTIONS."""
    entry = _vce_entry_modules()
    assert {"vce.models.checkpoint", "vce.inference"} <= set(entry)
    r = subprocess.run([sys.executable, "-c", _IMPORTED_DISTRIBUTIONS, str(PYFUNC), *entry], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    imported = {frozenset(map(_norm, ds)) for ds in json.loads(r.stdout.splitlines()[-1])} - {frozenset({"vce"})}
    listed = {_norm(d) for d in tracking.MODEL_DISTRIBUTIONS}
    seen = set().union(*imported)
    assert {"torch", "numpy", "mlflow", "simpleitk", "pyyaml", "pandas"} <= seen  # the scan sees the real imports
    missing = [sorted(ds) for ds in imported if not ds & listed]  # e.g. mlflow: mlflow or mlflow-skinny will do
    assert not missing, f"imported by the model's code but not required: {missing}"


def test_requirements_are_the_pins_of_requirements_txt():
    """Each model requirement is ``NAME==VERSION``, the version requirements.txt pins where it pins one."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#]+)", line.strip())
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    reqs = tracking.model_requirements()
    assert [r.split("==")[0] for r in reqs] == list(tracking.MODEL_DISTRIBUTIONS)
    for r in reqs:
        name, version = r.split("==")
        assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), r  # no local label such as +cpu
        if _norm(name) in pins:
            assert version == pins[_norm(name)], (r, pins[_norm(name)])
    assert {"torch", "mlflow", "simpleitk"} <= {_norm(r.split("==")[0]) for r in reqs} & set(pins)


def test_code_paths_are_the_vce_package():
    (path,) = tracking.model_code_paths()
    assert Path(path).name == "vce" and (Path(path) / "mlflow_pyfunc.py").samefile(PYFUNC)


# ---------------------------------------------------------------------------------- fresh virtualenv
def _clean_env(tmp: Path) -> dict[str, str]:
    """An environment without the project: no PYTHONPATH, no virtualenv, no user site; pip keeps
    this machine's configuration (PIP_* variables, /etc/pip.conf) to reach its index."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(ROOT) not in p)
    return {**env, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "HOME": str(tmp)}


_PREDICT = r"""
import sys, numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))
import vce
print("VCE_FROM", vce.__file__)
"""


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """A tiny trained generator logged and registered through vce.tracking (the path ``vce train``
    and ``vce compare`` take), its files downloaded from the store to a directory outside the repo."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    from test_trainer import MAIN, TINY, _write_split
    from vce.training import train_variant

    w = tmp_path_factory.mktemp("pyfunc")
    run_dir = train_variant(_write_split(w / "norm"), w / "run", MAIN, TINY, seed=1, metadata={"image_size": 32})
    uri = f"sqlite:///{w / 'mlflow.db'}"
    tr = tracking.start_run(uri, "pyfunc-standalone")
    info = tracking.log_generator_model(tr, run_dir / "checkpoint.pt", 32, 2)
    tr.finish()
    tracking.promote_champion(uri, "vce-pgmgvce-standalone", info["model_uri"], tr.run_id, {"vce.variant": MAIN.name})
    client = MlflowClient(uri, uri)
    mv = client.get_model_version_by_alias("vce-pgmgvce-standalone", "champion")
    location = client.get_logged_model(mv.source.removeprefix("models:/")).artifact_location
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(w / "model"), tracking_uri=uri))
    return {"dir": local, "checkpoint": run_dir / "checkpoint.pt", "work": w}


@pytest.mark.slow
def test_the_model_loads_and_predicts_in_a_fresh_virtualenv_without_the_repo(logged_model, tmp_path):
    import mlflow.pyfunc

    from vce.inference import run_generator
    from vce.models.checkpoint import load_generator

    model = logged_model["dir"]
    assert (model / "code" / "vce" / "inference.py").is_file()
    assert (model / "requirements.txt").read_text().split() == tracking.model_requirements()
    x = np.random.default_rng(7).random((3, 2, 32, 32), dtype=np.float32)
    here = mlflow.pyfunc.load_model(str(model)).predict(x)
    generator, _ = load_generator(logged_model["checkpoint"])
    np.testing.assert_allclose(here, run_generator(generator, x)[:, None], rtol=0, atol=1e-6)

    env, venv = _clean_env(tmp_path), tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, env=env, cwd=tmp_path, timeout=120)
    py = venv / "bin" / "python"
    t0 = time.monotonic()
    pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
                          "-r", str(model / "requirements.txt")], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=900)
    install_s = time.monotonic() - t0
    print(f"\nfresh virtualenv: pip install -r <model>/requirements.txt took {install_s:.0f} s")
    assert pip.returncode == 0, pip.stderr[-3000:]

    alone = subprocess.run([str(py), "-c", "import vce"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert alone.returncode != 0 and "No module named 'vce'" in alone.stderr  # vce is not installed there
    paths = subprocess.run([str(py), "-c", "import sys; print('\\n'.join(sys.path))"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in paths and str(Path(sys.prefix)) not in paths  # neither the repo nor its venv

    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([str(py), "-c", _PREDICT, str(model), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"VCE_FROM {model / 'code' / 'vce' / '__init__.py'}" in r.stdout  # the model's own copy of vce
    there = np.load(tmp_path / "y.npy")
    assert there.shape == (3, 1, 32, 32) and there.dtype == np.float32
    np.testing.assert_allclose(there, here, rtol=0, atol=1e-5)
