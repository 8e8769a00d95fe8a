"""Experiment tracking. The only module that imports mlflow (besides ``mlflow_pyfunc.py``, the
model code MLflow itself loads).

Library code logs through the small :class:`Tracker` protocol, so steps run (and are tested)
with or without MLflow: pass ``None`` or :class:`NullTracker` to log nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """A tracker that records nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


# --------------------------------------------------------------------------- MLflow
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "vce-study"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project's SQLite store ``mlflow/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow' / 'mlflow.db'}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go to ``artifacts/`` beside the database file."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def _retry(fn: Callable[[], Any], what: str, attempts: int = 8) -> Any:
    """Run ``fn``, retrying on SQLite's 'database is locked' (parallel writers)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
            logger.debug("retrying %s after: %s", what, exc)
    raise AssertionError("unreachable")


def _client(tracking_uri: str):
    """An MLflow client whose tracking *and* registry URIs are ``tracking_uri`` (never MLflow's
    process-wide defaults), with HTTP retries capped (:func:`cap_http_retries`)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cap_http_retries()
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# --------------------------------------------------------------------------- reaching the server
#: MLflow's HTTP client retries 7 times with exponential back-off (about 4 min on a dead server)
#: and waits 120 s per request; these caps apply unless the user set the variables.
HTTP_RETRY_CAPS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PREFLIGHT_TIMEOUT_S = 5.0
PREFLIGHT_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"


def cap_http_retries() -> None:
    """Cap MLflow's HTTP retries and timeout (:data:`HTTP_RETRY_CAPS`) in this process and its
    children, leaving values the user set alone."""
    for k, v in HTTP_RETRY_CAPS.items():
        os.environ.setdefault(k, v)


def shown_uri(uri: str) -> str:
    """``uri`` without a password (``http://user:secret@host`` -> ``http://user:***@host``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def preflight(tracking_uri: str | None, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Check once per process that an ``http(s)://`` tracking server answers, before any work.

    One GET of :data:`PREFLIGHT_PATH` with ``timeout`` (and the credentials MLflow would send:
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``); also caps MLflow's
    retries for the rest of the run. Other URIs (SQLite, databases) are not checked here.
    Raises :class:`~vce.io.errors.VCEEnvironmentError`: ``MLflow tracking server <uri>:
    unreachable (<reason>)``, or ``... access denied (HTTP 401) ...`` without valid credentials."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return
    cap_http_retries()
    if tracking_uri in _REACHED:
        return
    import urllib.error
    import urllib.request

    from .io.errors import VCEEnvironmentError

    where = f"MLflow tracking server {shown_uri(tracking_uri)}"
    req = urllib.request.Request(tracking_uri.rstrip("/") + PREFLIGHT_PATH, headers=_auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_tls_context()) as resp:
            resp.read(1)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise VCEEnvironmentError(f"{where}: access denied (HTTP {exc.code}); set MLFLOW_TRACKING_USERNAME and "
                                      "MLFLOW_TRACKING_PASSWORD to an MLflow user's (docs/tracking.md)") from None
        raise VCEEnvironmentError(f"{where}: not an MLflow tracking server? (HTTP {exc.code} for {PREFLIGHT_PATH})") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise VCEEnvironmentError(f"{where}: unreachable ({reason})") from None
    _REACHED.add(tracking_uri)


_REACHED: set[str] = set()


def _auth_headers() -> dict[str, str]:
    """The HTTP authorisation MLflow's client sends, from its environment variables."""
    import base64

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    return {}


def _tls_context() -> Any:
    """The TLS verification MLflow's client uses (``MLFLOW_TRACKING_INSECURE_TLS``,
    ``MLFLOW_TRACKING_SERVER_CERT_PATH``)."""
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 - the user asked for it, as MLflow honours it
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)


def get_or_create_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    client = _client(tracking_uri)

    def go() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=default_artifact_root(tracking_uri))
        except Exception:
            exp = client.get_experiment_by_name(name)  # created concurrently
            if exp is None:
                raise
            return exp.experiment_id

    return _retry(go, "create experiment")


class MlflowTracker:
    """A :class:`Tracker` writing to one MLflow run (by id), safe with parallel SQLite writers."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = _client(tracking_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)) for k, v in params.items()]
        for i in range(0, len(flat), 100):
            _retry(lambda: self.client.log_batch(self.run_id, params=flat[i : i + 100]), "log params")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        _retry(lambda: self.client.log_batch(self.run_id, metrics=ms), "log metrics")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), "log artifact")

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            _retry(lambda: self.client.set_tag(self.run_id, k, v), "set tag")

    def finish(self, status: str = "FINISHED") -> None:
        _retry(lambda: self.client.set_terminated(self.run_id, status), "terminate run")


def start_run(
    tracking_uri: str, run_name: str, experiment: str = DEFAULT_EXPERIMENT, parent_run_id: str | None = None,
    tags: dict[str, str] | None = None, lineage_sources: Any = None,
) -> MlflowTracker:
    """Create a run (a child of ``parent_run_id`` when given) and return its tracker. The run is
    tagged with its owner process (``vce.owner.*``, :func:`vce.runtime.owner`), so that a study
    can close the runs it leaves open (:func:`close_owned_runs`) and the next one can tell runs
    of a killed process (:func:`reconcile_dead_runs`), and with its lineage (:func:`log_lineage`:
    git commit, data and split versions, the split manifest as an input dataset) over
    ``lineage_sources`` (a :class:`vce.lineage.Sources`; default :func:`vce.lineage.sources_from_env`)."""
    from .lineage import collect
    from .runtime import owner

    exp_id = get_or_create_experiment(tracking_uri, experiment)
    lineage = collect(lineage_sources)
    client = _client(tracking_uri)
    inherited, inputs = {}, []
    if parent_run_id and not (lineage.data_md5 or lineage.split_id):
        inherited, inputs = _parent_lineage(client, parent_run_id)
    all_tags = {**owner().tags(), **inherited, **lineage.tags(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = _retry(lambda: client.create_run(exp_id, run_name=run_name, tags=all_tags), "create run")
    logger.info("MLflow run %s (%s) in experiment %s at %s", run.info.run_id, run_name, experiment, tracking_uri)
    tracker = MlflowTracker(tracking_uri, run.info.run_id)
    _log_dataset(tracker, lineage.dataset)
    if inputs:
        _retry(lambda: client.log_inputs(tracker.run_id, datasets=inputs), "log input")
    return tracker


#: The data-lineage tags a child run takes from its study's run (:meth:`vce.lineage.Lineage.tags`
#: but the code's, which every process records itself).
INHERITED_LINEAGE = ("vce.data.md5", "vce.data.path", "vce.split.manifest_md5", "vce.split_id")


def _parent_lineage(client: Any, parent_run_id: str) -> tuple[dict[str, str], list[Any]]:
    """The data lineage of a child run whose own sources are unknown: the parent (study) run's
    :data:`INHERITED_LINEAGE` tags and its input datasets (the split manifest)."""
    parent = _retry(lambda: client.get_run(parent_run_id), "get parent run")
    tags = {k: v for k, v in parent.data.tags.items() if k in INHERITED_LINEAGE}
    inputs = list(parent.inputs.dataset_inputs) if parent.inputs else []
    return tags, inputs


def log_lineage(tracker: MlflowTracker, sources: Any) -> None:
    """Add the lineage of ``sources`` (a :class:`vce.lineage.Sources`) to ``tracker``'s run, e.g. a
    study's parent run once its split exists: the tags of :meth:`vce.lineage.Lineage.tags` and
    the split manifest as an input dataset (:func:`_log_dataset`)."""
    from .lineage import collect

    lineage = collect(sources)
    tracker.set_tags(lineage.tags())
    _log_dataset(tracker, lineage.dataset)


def _log_dataset(tracker: MlflowTracker, dataset: Any) -> None:
    """``mlflow.log_input`` of a :class:`vce.lineage.Dataset` (the split manifest; context
    ``split``) to ``tracker``'s run: name, digest (the manifest's DVC md5), source (its path) and
    the manifest's columns as the schema. Nothing when ``dataset`` is None."""
    if dataset is None:
        return
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    ds = mlflow.data.from_pandas(pd.DataFrame(dataset.rows), source=dataset.source, name=dataset.name,
                                 digest=dataset.digest)
    entity = DatasetInput(dataset=ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "split")])
    _retry(lambda: tracker.client.log_inputs(tracker.run_id, datasets=[entity]), "log input")


def study_runs(tracking_uri: str, parent_run_id: str) -> list[Any]:
    """The child runs of a study's parent run."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether run ``run_id`` is in the store at ``tracking_uri`` (a SQLite file that does not
    exist is not created to find out)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        return False
    client = _client(tracking_uri)
    try:
        _retry(lambda: client.get_run(run_id), "get run")
    except Exception as exc:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST / bad id
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower() or "INVALID_PARAMETER" in str(exc):
            return False
        raise
    return True


def _running_runs(tracking_uri: str, experiment: str, tag_filter: str) -> tuple[Any, list[Any]]:
    """The client and the RUNNING runs of ``experiment`` matching ``tag_filter`` (an MLflow
    filter clause), all pages; no runs when the experiment does not exist."""
    client = _client(tracking_uri)
    exp = _retry(lambda: client.get_experiment_by_name(experiment), "get experiment")
    if exp is None:
        return client, []
    runs: list[Any] = []
    token = None
    while True:
        page = _retry(lambda: client.search_runs([exp.experiment_id], f"attributes.status = 'RUNNING' and {tag_filter}",
                                                 max_results=1000, page_token=token), "search runs")
        runs.extend(page)
        token = page.token
        if not token:
            return client, runs


def close_owned_runs(tracking_uri: str, token: str, status: str = "FAILED",
                     experiment: str = DEFAULT_EXPERIMENT) -> int:
    """Terminate with ``status`` the runs of ``experiment`` still RUNNING that the owner with
    ``token`` opened (tag ``vce.owner.token``): a study's parent and children after its DAG
    failed. Returns how many."""
    client, runs = _running_runs(tracking_uri, experiment, f"tags.`vce.owner.token` = '{token}'")
    for r in runs:
        _retry(lambda: client.set_terminated(r.info.run_id, status), "terminate run")
    if runs:
        logger.warning("marked %d MLflow run(s) of this study %s: %s", len(runs), status,
                       ", ".join(sorted(r.info.run_name or r.info.run_id for r in runs)))
    return len(runs)


def reconcile_dead_runs(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> int:
    """Mark KILLED (end time now) the RUNNING runs of ``experiment`` whose owner process
    (``vce.owner.*`` tags) ran on this host and is gone: what a ``kill -9`` of ``vce run`` left.
    Runs of live owners, of other hosts and without owner tags are left alone. Returns how many."""
    import socket

    from .runtime import owner_alive

    host = socket.gethostname()
    client, runs = _running_runs(tracking_uri, experiment, f"tags.`vce.owner.host` = '{host}'")
    dead = [r for r in runs if owner_alive(r.data.tags, host) is False]
    for r in dead:
        _retry(lambda: client.set_terminated(r.info.run_id, "KILLED"), "terminate run")
    if dead:
        logger.warning("marked %d MLflow run(s) in experiment %r KILLED: their process on this host (pid %s) is gone",
                       len(dead), experiment, ", ".join(sorted({r.data.tags["vce.owner.pid"] for r in dead})))
    return len(dead)


# --------------------------------------------------------------------------- models & registry
CHAMPION_ALIAS = "champion"
PYFUNC_CODE = Path(__file__).with_name("mlflow_pyfunc.py")
#: The distributions the logged model's code imports: ``mlflow_pyfunc.py`` and, shipped with the
#: model (``code_paths``), the ``vce`` modules it loads (``vce.models.checkpoint``, ``vce.inference``
#: and their imports). tests/test_pyfunc_standalone.py checks the list against those imports.
MODEL_DISTRIBUTIONS = ("torch", "mlflow", "numpy", "pandas", "scipy", "scikit-image", "SimpleITK", "nibabel", "PyYAML")


def model_requirements() -> list[str]:
    """The logged model's pip requirements: ``NAME==VERSION`` for each of :data:`MODEL_DISTRIBUTIONS`,
    the version installed here (requirements.txt's pins) without a local label such as torch's
    ``+cpu``, so the same pin takes the CUDA build on a GPU machine."""
    from importlib.metadata import version

    return [f"{d}=={version(d).split('+')[0]}" for d in MODEL_DISTRIBUTIONS]


def model_code_paths() -> list[str]:
    """The ``vce`` package's source directory, logged with the model (as ``code/vce``): the model
    loads and predicts where ``vce`` is not installed (a serving image, a fresh virtualenv)."""
    return [str(Path(__file__).resolve().parent)]


def registered_model_name(profile: str) -> str:
    """Registry name of the study's deployable model for a profile, e.g. ``vce-pgmgvce-demo``; its
    alias ``champion`` is moved by :func:`promote_champion` (``vce compare``)."""
    return f"vce-pgmgvce-{profile}"


def log_generator_model(
    tracker: MlflowTracker, checkpoint: str | Path, image_size: int, n_modalities: int,
) -> dict[str, Any]:
    """Log a trained generator to ``tracker``'s run as an MLflow pyfunc model (from code).

    The model is ``mlflow_pyfunc.py`` + the checkpoint (plain tensors, loaded with
    ``weights_only=True``) with signature ``float32 (-1, n_modalities, S, S) -> (-1, 1, S, S)``,
    self-contained: the ``vce`` source rides along (:func:`model_code_paths`) and its
    requirements.txt pins every distribution that code imports (:func:`model_requirements`).
    Nothing is registered here: after evaluation :func:`promote_champion` registers the best
    variant's logged model. Returns ``{"model_uri"}``.
    """
    import mlflow
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import infer_signature

    x = np.zeros((1, n_modalities, image_size, image_size), np.float32)
    signature = infer_signature(x, np.zeros((1, 1, image_size, image_size), np.float32))
    reqs = model_requirements()

    def go() -> Any:
        import warnings

        with _process_tracking_uri(tracker.tracking_uri), mlflow.start_run(run_id=tracker.run_id), \
                warnings.catch_warnings():
            # the signature is given; an input example would only duplicate it (and weigh MBs at 192^2)
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            return mlflow.pyfunc.log_model(
                name="generator", python_model=str(PYFUNC_CODE), artifacts={"checkpoint": str(checkpoint)},
                signature=signature, pip_requirements=reqs, code_paths=model_code_paths(),
            )

    info = _retry(go, "log model")
    logger.info("logged the generator as %s (vce source as code_paths; requirements %s)", info.model_uri, ", ".join(reqs))
    return {"model_uri": info.model_uri}


def variant_models(tracking_uri: str, parent_run_id: str) -> dict[str, dict[str, str]]:
    """``{variant: {"run_id", "model_uri"}}`` of the study's finished child runs that logged a
    generator (tags ``vce.variant``, ``vce.model_uri``); the newest run when a variant has several."""
    runs = _retry(lambda: study_runs(tracking_uri, parent_run_id), "search runs")
    out: dict[str, dict[str, str]] = {}
    for r in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        tags = r.data.tags
        if r.info.status == "FINISHED" and tags.get("vce.variant") and tags.get("vce.model_uri"):
            out[tags["vce.variant"]] = {"run_id": r.info.run_id, "model_uri": tags["vce.model_uri"]}
    return out


@contextlib.contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking *and* registry URIs set to ``uri`` for the block; both,
    and the ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` variables MLflow sets with them,
    restored after (unset stays unset)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    prev = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(prev[0])
        mlflow.set_registry_uri(prev[1])
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def promote_champion(
    tracking_uri: str, registered_name: str, model_uri: str, run_id: str, tags: dict[str, str],
    alias: str = CHAMPION_ALIAS,
) -> int:
    """Make the logged model ``model_uri`` (of run ``run_id``) the registered model's ``alias``.

    It becomes a new version of ``registered_name`` (created if needed), unless a version of that
    run with that source exists already (a rerun of ``vce compare``: that version is reused). The
    version gets ``tags`` (which variant and why, :meth:`vce.champion.Champion.tags`) and the
    reason (``tags["vce.champion_reason"]``) as its description; ``alias`` then points to it.
    Returns the version number.
    """
    client = _client(tracking_uri)

    def reg() -> Any:
        try:
            client.create_registered_model(registered_name)
        except Exception as exc:  # already exists
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        same = [mv for mv in client.search_model_versions(f"name = '{registered_name}' and run_id = '{run_id}'")
                if mv.source == model_uri]
        if same:
            return max(same, key=lambda mv: int(mv.version))
        # MLflow's SQL registry resolves a models:/m-<id> source with a default MlflowClient(), i.e. the
        # process-wide tracking URI: point it at this store, or it looks in ./mlflow.db and fails
        with _process_tracking_uri(tracking_uri):
            # a REST registry (mlflow server) refuses a models:/m-<id> source without its model_id
            model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
            return client.create_model_version(registered_name, model_uri, run_id=run_id, model_id=model_id)

    mv = _retry(reg, "register model")
    version = str(mv.version)
    for k, v in tags.items():
        _retry(lambda: client.set_model_version_tag(registered_name, version, k, v), "tag model version")
    if tags.get("vce.champion_reason"):
        _retry(lambda: client.update_model_version(registered_name, version, description=tags["vce.champion_reason"]),
               "describe model version")
    _retry(lambda: client.set_registered_model_alias(registered_name, alias, version), "set alias")
    logger.info("registered %s version %s as @%s (%s)", registered_name, version, alias,
                tags.get("vce.champion_reason", "no reason given"))
    return int(version)


def _model_source(uri_text: str, tracking_uri: str) -> str:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``models:/m-<id>`` -> the artifact location, looked up
    in the registry at ``tracking_uri`` itself (MLflow's own resolution of a registry URI falls back
    to the process-wide default, an empty ./mlflow.db, whatever tracking URI is passed); other URIs as given."""
    from mlflow.tracking import MlflowClient

    ref = uri_text[len("models:/"):] if uri_text.startswith("models:/") else ""
    if not ref:
        return uri_text
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        ref = client.get_model_version_by_alias(name, alias).source
    elif "/" in ref and not ref.startswith("m-"):
        name, version = ref.rsplit("/", 1)
        ref = client.get_model_version(name, version).source
    if ref.startswith("models:/"):
        ref = ref[len("models:/"):]
    if ref.startswith("m-"):  # an MLflow 3 logged model: its artifacts' own location, from the tracking store
        return client.get_logged_model(ref).artifact_location
    return ref


def resolve_checkpoint(model: str | Path, tracking_uri: str | None = None, dst: str | Path | None = None) -> Path:
    """A local ``checkpoint.pt`` for ``model``: a checkpoint file, a run directory holding one,
    or an MLflow model URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``runs:/<run_id>/generator``) whose artifacts are downloaded to ``dst`` (required for URIs: the
    caller owns and removes it, e.g. a ``tempfile.TemporaryDirectory``).

    Raises :class:`~vce.io.errors.VCEInputError` when nothing loadable is found.
    """
    from .io.errors import VCEInputError

    s = str(model)
    if not s.startswith(("models:/", "runs:/")):
        p = Path(s)
        p = p / "checkpoint.pt" if p.is_dir() else p
        if not p.is_file():
            raise VCEInputError(f"{model}: no model checkpoint here (expected a checkpoint.pt or a run directory)")
        return p
    from mlflow.artifacts import download_artifacts

    if dst is None:
        raise ValueError("resolve_checkpoint: a destination directory is needed to download an MLflow model")
    uri = tracking_uri or default_tracking_uri()
    _client(uri)
    dst = Path(dst)
    try:
        local = Path(download_artifacts(artifact_uri=_model_source(s, uri), dst_path=str(dst), tracking_uri=uri))
    except Exception as exc:  # noqa: BLE001 - unknown name/alias/run is a bad input
        raise VCEInputError(f"{s}: cannot resolve this MLflow model at {uri}: {exc}") from exc
    found = sorted(local.rglob("checkpoint.pt"))
    if not found:
        raise VCEInputError(f"{s}: the MLflow model has no checkpoint.pt artifact (not a VCE generator)")
    return found[0]
