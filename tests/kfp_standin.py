"""A loopback stand-in of the Kubeflow Pipelines v2beta1 REST API (no cluster can run here).

It serves the calls ``kfp.Client`` makes for ``vce submit`` / ``vce schedule`` (paths and JSON
field names as in ``kfp_server_api``): healthz, experiments list/create, pipelines list/upload,
pipeline versions upload/list, runs create, recurring runs create. It RECORDS every request
(method, path, query, headers, parsed body) and checks what the real API server checks (a known
experiment, a pipeline spec or an existing version reference, a cron trigger, max_concurrency in
1..10), answering 400 like the server when a request is wrong. ``token`` makes every request
without ``Authorization: Bearer <token>`` fail with 401 (grpc-gateway's JSON error body);
``fail[(METHOD, PATH)] = (status, message)`` makes that one call fail (e.g. 403 on run creation,
as a namespace's RBAC would).

    with KFPStandIn(token="s3cret") as kfp:
        ...  # kfp.url; then kfp.requests, kfp.find("POST", "/apis/v2beta1/runs")
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"


@dataclass
class Recorded:
    """One request as the stand-in received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, {field: bytes|str} for multipart, None when empty
    status: int = 0


@dataclass
class _State:
    experiments: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, list[dict]] = field(default_factory=dict)  # pipeline id -> versions, oldest first
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)


class ApiError(Exception):
    """An error answer: HTTP status, gRPC code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class KFPStandIn:
    """The stand-in server on ``127.0.0.1:<free port>``, served from a thread."""

    def __init__(self, token: str | None = None, multi_user: bool = False) -> None:
        self.token = token
        self.multi_user = multi_user
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}
        self.requests: list[Recorded] = []
        self.state = _State()
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "KFPStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def find(self, method: str, path: str) -> list[Recorded]:
        """The recorded requests with this method and path (query excluded)."""
        return [r for r in self.requests if r.method == method and r.path == path]

    # ------------------------------------------------------------------ dispatch

    def handle(self, rec: Recorded) -> tuple[int, dict]:
        """Answer one recorded request: (status, JSON body)."""
        with self._lock:
            self.requests.append(rec)
            try:
                self._authorize(rec)
                if (rec.method, rec.path) in self.fail:
                    status, message = self.fail[(rec.method, rec.path)]
                    raise ApiError(status, 7 if status == 403 else 13, message)
                return 200, self._route(rec)
            except ApiError as err:
                return err.status, {"error": err.message, "code": err.code, "message": err.message, "details": []}

    def _authorize(self, rec: Recorded) -> None:
        if self.token is None:
            return
        got = rec.headers.get("authorization", "")
        if got != f"Bearer {self.token}":
            raise ApiError(401, 16, "Unauthenticated: request has no valid bearer token" if got else
                           "Unauthenticated: no Authorization header")

    def _route(self, rec: Recorded) -> dict:
        routes = {
            ("GET", f"{API}/healthz"): lambda r: {"multi_user": self.multi_user, "pipeline_store": "standin"},
            ("GET", f"{API}/experiments"): self._list_experiments,
            ("POST", f"{API}/experiments"): self._create_experiment,
            ("GET", f"{API}/pipelines"): self._list_pipelines,
            ("POST", f"{API}/pipelines/upload"): self._upload_pipeline,
            ("POST", f"{API}/pipelines/upload_version"): self._upload_version,
            ("POST", f"{API}/runs"): self._create_run,
            ("POST", f"{API}/recurringruns"): self._create_recurring_run,
        }
        fn = routes.get((rec.method, rec.path))
        if fn is None and rec.method == "GET" and rec.path.startswith(f"{API}/pipelines/") and rec.path.endswith("/versions"):
            fn = self._list_versions
        if fn is None:
            raise ApiError(404, 5, f"Not Found: {rec.method} {rec.path}")
        return fn(rec)

    def _now(self) -> str:
        return f"2026-01-01T00:00:{next(self._clock) % 60:02d}Z"

    # ------------------------------------------------------------------ experiments

    def _list_experiments(self, rec: Recorded) -> dict:
        name = _filter_name(rec.query.get("filter"))
        ns = rec.query.get("namespace") or ""
        found = [e for e in self.state.experiments.values()
                 if (name is None or e["display_name"] == name) and e.get("namespace", "") == ns]
        return {"experiments": found, "total_size": len(found)} if found else {}

    def _create_experiment(self, rec: Recorded) -> dict:
        body = _json_body(rec)
        if not body.get("display_name"):
            raise ApiError(400, 3, "Invalid input error: experiment name is empty")
        exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
               "namespace": body.get("namespace") or "", "created_at": self._now(), "storage_state": "AVAILABLE"}
        self.state.experiments[exp["experiment_id"]] = exp
        return exp

    # ------------------------------------------------------------------ pipelines

    def _list_pipelines(self, rec: Recorded) -> dict:
        name = _filter_name(rec.query.get("filter"))
        found = [p for p in self.state.pipelines.values() if name is None or p["display_name"] == name]
        return {"pipelines": found, "total_size": len(found)} if found else {}

    def _uploaded_spec(self, rec: Recorded) -> Any:
        if not isinstance(rec.body, dict) or "uploadfile" not in rec.body:
            raise ApiError(400, 3, "Failed to read pipeline from file: no uploadfile part")
        docs = [d for d in yaml.safe_load_all(rec.body["uploadfile"]) if d is not None]
        if not docs or "pipelineInfo" not in docs[0]:
            raise ApiError(400, 3, "Failed to parse the pipeline spec")
        return docs[0]

    def _upload_pipeline(self, rec: Recorded) -> dict:
        spec = self._uploaded_spec(rec)
        name = rec.query.get("name") or spec["pipelineInfo"]["name"]
        if any(p["display_name"] == name for p in self.state.pipelines.values()):
            raise ApiError(409, 6, f"Already exist error: pipeline {name} already exists")
        pid = str(uuid.uuid4())
        pipe = {"pipeline_id": pid, "display_name": name, "name": name, "namespace": rec.query.get("namespace", ""),
                "description": rec.query.get("description", ""), "created_at": self._now()}
        self.state.pipelines[pid] = pipe
        self.state.versions[pid] = [self._version(pid, name, spec)]
        return pipe

    def _version(self, pid: str, name: str, spec: Any) -> dict:
        return {"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": name, "name": name,
                "created_at": self._now(), "pipeline_spec": spec}

    def _upload_version(self, rec: Recorded) -> dict:
        spec = self._uploaded_spec(rec)
        pid, name = rec.query.get("pipelineid", ""), rec.query.get("name", "")
        if pid not in self.state.pipelines:
            raise ApiError(404, 5, f"Pipeline {pid} not found")
        if not name or any(v["display_name"] == name for v in self.state.versions[pid]):
            raise ApiError(409, 6, f"Already exist error: version {name!r}")
        version = self._version(pid, name, spec)
        self.state.versions[pid].append(version)
        return version

    def _list_versions(self, rec: Recorded) -> dict:
        pid = rec.path[len(f"{API}/pipelines/"):-len("/versions")]
        versions = list(self.state.versions.get(pid, []))
        if rec.query.get("sort_by", "").endswith("desc"):
            versions.reverse()
        versions = versions[: int(rec.query.get("page_size") or len(versions) or 1)]
        return {"pipeline_versions": versions, "total_size": len(versions)}

    # ------------------------------------------------------------------ runs

    def _check_job(self, body: dict) -> None:
        if body.get("experiment_id") not in self.state.experiments:
            raise ApiError(400, 3, f"Invalid input error: experiment {body.get('experiment_id')} not found")
        ref = body.get("pipeline_version_reference") or {}
        if ref:
            known = {v["pipeline_version_id"] for v in self.state.versions.get(ref.get("pipeline_id", ""), [])}
            if ref.get("pipeline_version_id") not in known:
                raise ApiError(400, 3, f"Invalid input error: pipeline version {ref} not found")
        elif not body.get("pipeline_spec"):
            raise ApiError(400, 3, "Invalid input error: neither pipeline_spec nor pipeline_version_reference")
        if not body.get("display_name"):
            raise ApiError(400, 3, "Invalid input error: display_name is empty")

    def _create_run(self, rec: Recorded) -> dict:
        body = _json_body(rec)
        self._check_job(body)
        run = dict(body, run_id=str(uuid.uuid4()), state="PENDING", created_at=self._now())
        self.state.runs[run["run_id"]] = run
        return run

    def _create_recurring_run(self, rec: Recorded) -> dict:
        body = _json_body(rec)
        self._check_job(body)
        trigger = body.get("trigger") or {}
        if not (trigger.get("cron_schedule") or {}).get("cron") and not trigger.get("periodic_schedule"):
            raise ApiError(400, 3, "Invalid input error: a trigger (cron_schedule or periodic_schedule) is required")
        if not 1 <= int(body.get("max_concurrency") or 0) <= 10:
            raise ApiError(400, 3, "Invalid input error: max concurrency must be in [1, 10]")
        rr = dict(body, recurring_run_id=str(uuid.uuid4()), status="ENABLED", created_at=self._now())
        self.state.recurring_runs[rr["recurring_run_id"]] = rr
        return rr


def _filter_name(raw: str | None) -> str | None:
    """The ``display_name`` EQUALS value of a KFP list filter (JSON), or None."""
    if not raw:
        return None
    for pred in json.loads(raw).get("predicates", []):
        if pred.get("key") == "display_name" and pred.get("operation") in ("EQUALS", 1):
            return pred.get("stringValue") or pred.get("string_value")
    return None


def _json_body(rec: Recorded) -> dict:
    if not isinstance(rec.body, dict):
        raise ApiError(400, 3, "Invalid input error: expected a JSON object body")
    return rec.body


def _parse_body(content_type: str, raw: bytes) -> Any:
    """JSON, or a multipart form as {field name: bytes of a file part | str}."""
    if not raw:
        return None
    if content_type.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        parts: dict[str, Any] = {}
        for part in msg.iter_parts():
            payload = part.get_payload(decode=True)
            parts[part.get_param("name", header="content-disposition")] = (
                payload if part.get_filename() else payload.decode("utf-8"))
            if part.get_filename():
                parts[f"{part.get_param('name', header='content-disposition')}.filename"] = part.get_filename()
        return parts
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _handler(standin: KFPStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            rec = Recorded(method=self.command, path=url.path,
                           query={k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()},
                           headers={k.lower(): v for k, v in self.headers.items()},
                           body=_parse_body(self.headers.get("Content-Type", ""), raw))
            status, body = standin.handle(rec)
            rec.status = status
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, fmt: str, *args: object) -> None:  # quiet
            pass

    return Handler


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/kfp_standin.py
    import time

    with KFPStandIn() as s:
        print(f"KFP stand-in on {s.url} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
