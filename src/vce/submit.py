"""Submit the compiled study to a Kubeflow Pipelines endpoint: one run (``vce submit``) or a
recurring run on a cron schedule (``vce schedule``). docs/submit.md.

The endpoint comes from ``--host`` or ``$KFP_HOST`` (else kfp's own ``$KF_PIPELINES_ENDPOINT``);
the bearer token from ``--token-file PATH`` or ``$KFP_TOKEN`` (never a flag: a command line is
visible to every user of the machine). The pipeline is the compiled package
(``pipelines/vce_study.yaml``, read at run time); its arguments are the params file (the
pipeline's ``params_yaml``, encoded as ``pipelines.vce_study.default_arguments`` does), the profile,
and ``KEY=VALUE`` pairs for any other parameter the package declares.

Every failure a user can fix (no endpoint, unreachable endpoint, refused token, unknown parameter,
invalid cron) raises :class:`~vce.io.errors.VCEInputError` with one line naming it; the CLI
prints it and exits 2. Nothing waits long: the endpoint is probed once with a short timeout
before kfp's client (which retries its health check for about 25 s) is made.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import re
import ssl
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import load_config_text
from .io.errors import VCEEnvironmentError, VCEInputError

log = logging.getLogger(__name__)

HOST_ENVS = ("KFP_HOST", "KF_PIPELINES_ENDPOINT")
TOKEN_ENV = "KFP_TOKEN"
NAMESPACE_ENV = "KFP_NAMESPACE"
UI_HOST_ENV = "KFP_UI_HOST"
DEFAULT_EXPERIMENT = "vce-study"
DEFAULT_TIMEOUT_S = 10.0
HEALTHZ = "/apis/v2beta1/healthz"
#: Parameters set from the params file and ``--profile``, never by ``KEY=VALUE``.
FROM_PARAMS = ("params_yaml", "profile")


class CronError(VCEInputError):
    """A cron expression KFP's scheduler would refuse."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the KFP API (``host`` with scheme, no trailing slash)."""

    host: str
    token: str | None = None
    namespace: str | None = None
    ui_host: str | None = None
    ca_cert: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def ui(self) -> str:
        """Base URL of the KFP UI (``--ui-host``, ``$KFP_UI_HOST``, else the API host)."""
        return (self.ui_host or self.host).rstrip("/")


@dataclass(frozen=True)
class Submitted:
    """What the endpoint created: ``kind`` is ``run`` or ``recurring run``."""

    kind: str
    id: str
    url: str
    experiment_id: str
    pipeline_id: str | None = None
    pipeline_version_id: str | None = None


# --------------------------------------------------------------------------- endpoint and token


def read_token(token_file: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token: the first line of ``token_file``, else ``$KFP_TOKEN``, else none."""
    if token_file:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise VCEInputError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise VCEInputError(f"{path}: the token file is empty")
        return token
    return env.get(TOKEN_ENV, "").strip() or None


def resolve_endpoint(host: str | None = None, token_file: str | None = None, namespace: str | None = None,
                     ui_host: str | None = None, ca_cert: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                     env: Mapping[str, str] = os.environ) -> Endpoint:
    """Flags first, then environment variables; refuses a missing host."""
    host = host or next((env[k] for k in HOST_ENVS if env.get(k)), None)
    if not host:
        raise VCEInputError("no KFP endpoint: pass --host URL or set KFP_HOST (e.g. http://localhost:8080 "
                            "after `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)")
    if not re.match(r"^https?://", host):
        log.info("KFP host %s has no scheme; using https://%s", host, host)
        host = "https://" + host
    if ca_cert and not Path(ca_cert).is_file():
        raise VCEInputError(f"{ca_cert}: CA certificate file not found")
    if timeout <= 0:
        raise VCEInputError(f"--timeout must be positive seconds, got {timeout}")
    return Endpoint(host=host.rstrip("/"), token=read_token(token_file, env),
                    namespace=namespace or env.get(NAMESPACE_ENV) or None,
                    ui_host=ui_host or env.get(UI_HOST_ENV) or None, ca_cert=ca_cert, timeout=timeout)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect from the API is a login page (Dex, OAuth2 proxy): report it, do not follow it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102, ANN001
        return None


def _auth_error(ep: Endpoint, status: int, detail: str) -> VCEInputError:
    how = "the token was refused" if ep.token else "it needs a token"
    return VCEInputError(f"KFP at {ep.host} refused the request (HTTP {status}: {detail}): {how}; "
                         f"set KFP_TOKEN or pass --token-file PATH (and --namespace for a multi-user cluster)")


def check_endpoint(ep: Endpoint) -> dict[str, Any]:
    """One ``GET /apis/v2beta1/healthz`` within ``ep.timeout`` seconds, with the token; returns
    the health JSON. Unreachable, not KFP, or refused: :class:`VCEInputError` naming the host."""
    headers = {"Accept": "application/json"}
    if ep.token:
        headers["Authorization"] = f"Bearer {ep.token}"
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect(), urllib.request.ProxyHandler({})]  # as kfp: no env proxy
    if ep.ca_cert:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ep.ca_cert)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(ep.host + HEALTHZ, headers=headers), timeout=ep.timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(ep, exc.code, exc.read(), exc.headers.get("Location")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VCEInputError(f"cannot reach KFP at {ep.host}: {reason} (waited at most {ep.timeout:g} s; "
                            f"check --host / KFP_HOST and that the endpoint or port-forward is up)") from None
    try:
        health = json.loads(body or b"{}")
    except ValueError:
        raise VCEInputError(f"{ep.host}{HEALTHZ} did not answer JSON: not a KFP API endpoint "
                            f"(a KFP behind the Kubeflow dashboard is at https://HOST/pipeline)") from None
    log.info("KFP at %s is up (multi_user=%s)", ep.host, health.get("multi_user"))
    return health


def _http_error(ep: Endpoint, status: int, body: bytes, location: str | None) -> VCEInputError:
    detail = _message(body)
    if status in (401, 403):
        return _auth_error(ep, status, detail)
    if 300 <= status < 400:
        return _auth_error(ep, status, f"redirected to a login page {location or ''}".strip())
    if status == 404:
        return VCEInputError(f"{ep.host}{HEALTHZ}: HTTP 404: not a KFP v2 API endpoint "
                             f"(a KFP behind the Kubeflow dashboard is at https://HOST/pipeline)")
    return VCEInputError(f"KFP at {ep.host} answered HTTP {status}: {detail}")


def _message(body: bytes | str | None) -> str:
    """The server's one-line message: ``message``/``error`` of a JSON body, else its first line."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("message") or data.get("error") or text)
    except ValueError:
        pass
    line = text.strip().splitlines()[0] if text.strip() else "no message"
    return line[:300]


# --------------------------------------------------------------------------- pipeline and arguments


def default_pipeline_path() -> Path:
    """``pipelines/vce_study.yaml`` in the current directory, else the repository's."""
    here = Path("pipelines") / "vce_study.yaml"
    return here if here.exists() else Path(__file__).resolve().parents[2] / "pipelines" / "vce_study.yaml"


def pipeline_documents(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The compiled package's pipeline spec and its platform spec (``{}`` when absent)."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except OSError as exc:
        raise VCEInputError(f"{path}: cannot read the compiled pipeline ({exc.strerror or exc}); "
                            f"compile it with `python -m pipelines.vce_study`") from None
    except yaml.YAMLError as exc:
        raise VCEInputError(f"{path}: not valid YAML ({exc})") from None
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0] or "pipelineInfo" not in docs[0]:
        raise VCEInputError(f"{path}: not a compiled KFP pipeline (no root / pipelineInfo)")
    return docs[0], (docs[1] if len(docs) > 1 else {})


def declared_parameters(spec: Mapping[str, Any]) -> dict[str, str]:
    """The pipeline's parameters: name -> KFP type (``STRING``, ``NUMBER_INTEGER``, ...)."""
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    return {name: d.get("parameterType", "STRING") for name, d in params.items()}


def params_yaml_argument(text: str) -> str:
    """The params file as the pipeline's ``params_yaml`` string: one-line JSON of the parsed YAML,
    the encoding of ``pipelines.vce_study.default_arguments``."""
    from .config import load_yaml  # YAML 1.2 scalars, as load_config (DVC rewrites params.yaml unquoted)

    return json.dumps(load_yaml(text))


def _typed(name: str, kind: str, value: str) -> Any:
    """``value`` (text) as the declared KFP type of parameter ``name``."""
    try:
        if kind == "NUMBER_INTEGER":
            return int(value)
        if kind == "NUMBER_DOUBLE":
            return float(value)
        if kind == "BOOLEAN":
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
        if kind in ("LIST", "STRUCT"):
            parsed = json.loads(value)
            if not isinstance(parsed, list if kind == "LIST" else dict):
                raise ValueError(value)
            return parsed
    except ValueError:
        raise VCEInputError(f"--arg {name}={value}: not a valid {kind} (the pipeline declares {name} as {kind})") from None
    return value


def parse_args(pairs: Sequence[str], declared: Mapping[str, str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs checked against the pipeline's declared parameters and typed."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise VCEInputError(f"--arg {pair!r}: expected KEY=VALUE")
        if key in FROM_PARAMS:
            raise VCEInputError(f"--arg {key}: set by --params/--profile, not by --arg")
        if key not in declared:
            known = ", ".join(sorted(k for k in declared if k not in FROM_PARAMS))
            raise VCEInputError(f"--arg {key}: the pipeline has no parameter {key!r}; it declares: {known}")
        out[key] = _typed(key, declared[key], value)
    return out


def pipeline_arguments(pipeline: str | Path, params_path: str | Path, profile: str | None,
                       pairs: Sequence[str] = ()) -> dict[str, Any]:
    """The run's arguments: ``params_yaml`` (the params file), ``profile`` (``profile`` or the
    file's default), then the ``KEY=VALUE`` pairs. The profile is validated against the file."""
    spec, _ = pipeline_documents(pipeline)
    declared = declared_parameters(spec)
    missing = [k for k in FROM_PARAMS if k not in declared]
    if missing:
        raise VCEInputError(f"{pipeline}: the pipeline declares no parameter {', '.join(missing)}")
    path = Path(params_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VCEInputError(f"{path}: cannot read the params file ({exc.strerror or exc})") from None
    cfg = load_config_text(text, profile, source=str(path))
    args: dict[str, Any] = {"params_yaml": params_yaml_argument(text), "profile": cfg.profile}
    args.update(parse_args(pairs, declared))
    return args


# --------------------------------------------------------------------------- cron


_CRON_FIELDS = (  # KFP's scheduler (robfig/cron): 6 fields, seconds first
    ("second", 0, 59, ()), ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
#: Descriptors -> the six-field form to use instead (kfp documents six fields only).
_CRON_DESCRIPTORS = {"@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
                     "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *"}
_CRON_PART = re.compile(r"^(?P<range>\*|\?|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/(?P<step>[0-9]+))?$")


def _cron_value(token: str, lo: int, hi: int, names: tuple[str, ...]) -> int:
    if token.upper() in names:
        return names.index(token.upper()) + lo
    if not token.isdigit() or not lo <= int(token) <= hi:
        raise ValueError(token)
    return int(token)


def _check_cron_field(field: str, name: str, lo: int, hi: int, names: tuple[str, ...]) -> None:
    for part in field.split(","):
        m = _CRON_PART.match(part)
        if not m:
            raise CronError(f"{part!r} in the {name} field")
        rng, step = m.group("range"), m.group("step")
        if rng == "?" and name not in ("day of month", "day of week"):
            raise CronError(f"'?' is only allowed in the day fields, not in the {name} field")
        if step is not None and int(step) == 0:
            raise CronError(f"step 0 in the {name} field")
        if rng in ("*", "?"):
            continue
        try:
            bounds = [_cron_value(t, lo, hi, names) for t in rng.split("-")]
        except ValueError as exc:
            raise CronError(f"{exc.args[0]!r} in the {name} field is outside {lo}-{hi}") from None
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise CronError(f"range {rng} in the {name} field runs backwards")


def validate_cron(expr: str) -> str:
    """``expr`` (whitespace normalised) if it is a cron expression in the form kfp documents for
    ``create_recurring_run``: six fields, seconds first (``0 0 2 * * *`` is 02:00 UTC daily). A
    five-field crontab line (which a seconds-first parser would misread) and a descriptor such as
    ``@daily`` are refused with the six-field form to use."""
    expr = " ".join(expr.split())
    fields = expr.split(" ") if expr else []
    try:
        if expr.lower() in _CRON_DESCRIPTORS:
            raise CronError(f"use the six-field form '{_CRON_DESCRIPTORS[expr.lower()]}' for {expr}")
        if len(fields) == 5:
            raise CronError(f"KFP cron has 6 fields, seconds first; for the crontab line {expr!r} use '0 {expr}'")
        if len(fields) != 6:
            raise CronError(f"expected 6 fields (second minute hour day-of-month month day-of-week), got {len(fields)}")
        for field, (name, lo, hi, names) in zip(fields, _CRON_FIELDS):
            _check_cron_field(field, name, lo, hi, names)
    except CronError as exc:
        raise CronError(f"invalid cron expression {expr!r}: {exc}") from None
    return expr


# --------------------------------------------------------------------------- kfp client


@contextlib.contextmanager
def _kfp_errors(ep: Endpoint, what: str) -> Iterator[None]:
    """kfp's exceptions -> one-line :class:`VCEInputError`; kfp's prints -> the log."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except VCEInputError:
        raise
    except ApiException as exc:
        if exc.status in (401, 403):
            raise _auth_error(ep, exc.status, _message(exc.body)) from None
        if not exc.status:
            raise VCEInputError(f"cannot reach KFP at {ep.host} while {what}: {exc.reason}") from None
        raise VCEInputError(f"KFP at {ep.host} refused {what} (HTTP {exc.status}: {_message(exc.body)})") from None
    except urllib3.exceptions.HTTPError as exc:
        raise VCEInputError(f"cannot reach KFP at {ep.host} while {what}: {exc}") from None
    except ValueError as exc:  # kfp's own refusals, e.g. two experiments with one name
        raise VCEInputError(f"KFP at {ep.host}: {what}: {exc}") from None
    finally:
        for line in printed.getvalue().splitlines():
            log.info("kfp: %s", line)


def connect(ep: Endpoint):
    """A ``kfp.Client`` for ``ep`` whose requests give up connecting after ``ep.timeout`` seconds
    (reading after at least 60 s: an upload can be slow) and retry a failed connection once; probes
    the endpoint first (:func:`check_endpoint`) so that a dead host fails fast."""
    health = check_endpoint(ep)
    if health.get("multi_user") and not (ep.namespace or _implicit_namespace()):
        raise VCEInputError(f"KFP at {ep.host} is multi-user: pass --namespace NS (or set {NAMESPACE_ENV}) "
                            f"for the profile namespace the runs go to")
    import kfp  # about 5 s (kfp imports the kubernetes client): after the probe, so a dead host fails fast
    import urllib3

    with _kfp_errors(ep, "connecting"):
        client = kfp.Client(host=ep.host, existing_token=ep.token, namespace=ep.namespace or "kubeflow",
                            ui_host=ep.ui, ssl_ca_cert=ep.ca_cert)
    pool = client._run_api.api_client.rest_client.pool_manager  # one pool manager serves every API of the client
    pool.connection_pool_kw["timeout"] = urllib3.Timeout(connect=ep.timeout, read=max(ep.timeout, 60.0))
    pool.connection_pool_kw["retries"] = urllib3.Retry(total=1, connect=1, read=0, redirect=0, status=0)
    pool.clear()
    return client


def _implicit_namespace() -> str | None:
    """The namespace kfp's client finds by itself: its context file (``kfp`` CLI), else the pod's
    service-account namespace when running inside the cluster."""
    for path, key in ((Path.home() / ".config" / "kfp" / "context.json", "namespace"),
                      (Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace"), None)):
        try:
            text = path.read_text(encoding="utf-8")
            value = json.loads(text).get(key) if key else text.strip()
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value)
    return None


def _experiment_id(client, ep: Endpoint, name: str) -> str:
    """The id of KFP experiment ``name`` in the namespace, created when absent."""
    with _kfp_errors(ep, f"getting or creating experiment {name!r}"):
        exp = client.create_experiment(name=name, namespace=ep.namespace)
    log.info("KFP experiment %s: %s", name, exp.experiment_id)
    return exp.experiment_id


def without_cache(pipeline: str | Path, out_dir: str | Path) -> Path:
    """A copy of the compiled ``pipeline`` in ``out_dir`` with caching off for every task of every
    DAG. (kfp's ``enable_caching=False`` reaches only the root DAG's tasks: here those are the exit
    handler and its cleanup, not the steps inside.)"""
    spec, platform = pipeline_documents(pipeline)
    dags = [spec["root"].get("dag", {})] + [c.get("dag", {}) for c in spec.get("components", {}).values()]
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            task["cachingOptions"] = {k: v for k, v in task.get("cachingOptions", {}).items() if k != "enableCache"}
    out = Path(out_dir) / Path(pipeline).name
    out.write_text(yaml.safe_dump_all([spec, platform] if platform else [spec], sort_keys=False), encoding="utf-8")
    return out


def submit_run(ep: Endpoint, pipeline: str | Path, arguments: Mapping[str, Any], *, run_name: str | None = None,
               experiment: str = DEFAULT_EXPERIMENT, cache: bool = True,
               pipeline_root: str | None = None, service_account: str | None = None) -> Submitted:
    """One run of the compiled ``pipeline`` (its spec sent inline) in ``experiment``;
    ``cache=False`` runs every task again (:func:`without_cache`)."""
    import tempfile

    pipeline_documents(pipeline)  # refuse a bad package before connecting
    client = connect(ep)
    exp_id = _experiment_id(client, ep, experiment)
    name = run_name or f"vce-study {arguments.get('profile', '')} {_utc_stamp()}".replace("  ", " ")
    with tempfile.TemporaryDirectory(prefix="vce-submit-") as tmp, _kfp_errors(ep, "creating the run"):
        package = pipeline if cache else without_cache(pipeline, tmp)
        result = client.create_run_from_pipeline_package(
            pipeline_file=str(package), arguments=dict(arguments), run_name=name, experiment_id=exp_id,
            pipeline_root=pipeline_root, service_account=service_account)
    run_id = result.run_id
    log.info("created KFP run %s (%s) in experiment %s", run_id, name, experiment)
    return Submitted("run", run_id, f"{ep.ui}/#/runs/details/{run_id}", exp_id)


def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def upload_version(client, ep: Endpoint, pipeline: str | Path, pipeline_name: str | None = None) -> tuple[str, str]:
    """Upload the compiled ``pipeline`` as a new version of the KFP pipeline ``pipeline_name``
    (created when absent; default: the package's own name). Returns (pipeline id, version id)."""
    spec, _ = pipeline_documents(pipeline)
    name = pipeline_name or spec["pipelineInfo"]["name"]
    digest = hashlib.sha256(Path(pipeline).read_bytes()).hexdigest()[:12]
    version = f"{name}-{digest}-{_utc_stamp()}"
    found = _find_pipeline(client, ep, name)
    if found is None:
        with _kfp_errors(ep, f"uploading pipeline {name!r}"):
            pipeline_id = client.upload_pipeline(str(pipeline), pipeline_name=name, namespace=ep.namespace,
                                                 description=spec["pipelineInfo"].get("description")).pipeline_id
        with _kfp_errors(ep, f"listing the versions of pipeline {name!r}"):
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
        if not versions:
            raise VCEInputError(f"KFP at {ep.host}: pipeline {name!r} ({pipeline_id}) was uploaded but lists no version")
        version_id = versions[0].pipeline_version_id
    else:
        pipeline_id = found
        with _kfp_errors(ep, f"uploading version {version!r} of pipeline {name!r}"):
            version_id = client.upload_pipeline_version(str(pipeline), version, pipeline_id=pipeline_id).pipeline_version_id
    log.info("KFP pipeline %s (%s), version %s", name, pipeline_id, version_id)
    return pipeline_id, version_id


def _find_pipeline(client, ep: Endpoint, name: str) -> str | None:
    """The id of the KFP pipeline named ``name`` (in the namespace when one is set), or None."""
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    with _kfp_errors(ep, f"looking up pipeline {name!r}"):
        found = client.list_pipelines(filter=flt, namespace=ep.namespace).pipelines or []
    if len(found) > 1:
        raise VCEInputError(f"KFP at {ep.host}: {len(found)} pipelines are named {name!r}; pass --pipeline-name")
    return found[0].pipeline_id if found else None


def schedule_run(ep: Endpoint, pipeline: str | Path, arguments: Mapping[str, Any], cron: str, *,
                 name: str | None = None, experiment: str = DEFAULT_EXPERIMENT, pipeline_name: str | None = None,
                 pipeline_root: str | None = None, service_account: str | None = None) -> Submitted:
    """A recurring run of ``pipeline`` on ``cron`` (UTC): one run at a time (``max_concurrency=1``),
    no catch-up of missed runs; the package is uploaded as a new pipeline version first."""
    cron = validate_cron(cron)
    pipeline_documents(pipeline)
    client = connect(ep)
    exp_id = _experiment_id(client, ep, experiment)
    pipeline_id, version_id = upload_version(client, ep, pipeline, pipeline_name)
    job = name or f"vce-study {arguments.get('profile', '')} schedule".replace("  ", " ")
    with _kfp_errors(ep, "creating the recurring run"):
        rr = client.create_recurring_run(
            experiment_id=exp_id, job_name=job, cron_expression=cron, max_concurrency=1, no_catchup=True,
            params=dict(arguments), pipeline_id=pipeline_id, version_id=version_id, enabled=True,
            pipeline_root=pipeline_root, service_account=service_account)
    rid = rr.recurring_run_id
    log.info("created KFP recurring run %s (%s) on %r in experiment %s", rid, job, cron, experiment)
    return Submitted("recurring run", rid, f"{ep.ui}/#/recurringrun/details/{rid}", exp_id, pipeline_id, version_id)
