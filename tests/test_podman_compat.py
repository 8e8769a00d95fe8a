"""vce.podman_compat against a loopback HTTP server that answers as podman 4 does for a
container it is auto-removing (HTTP 500 "... no such container"), through docker-py's real
client: kfp's DockerRunner must see Docker's NotFound there, and every other error unchanged."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest
from docker import errors

from vce.podman_compat import removed_container_is_not_found

GONE = "container b20010fefc64 does not exist in database: no such container"


class _Podman(BaseHTTPRequestHandler):
    """``/containers/gone/json`` -> podman's 500 for a removed container; ``/containers/broken/json``
    -> another 500; anything else -> 404 (Docker's answer for a missing container)."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        if "/containers/gone/" in self.path:
            status, message = 500, GONE
        elif "/containers/broken/" in self.path:
            status, message = 500, "runtime crashed: out of disk"
        else:
            status, message = 404, "no container with name or ID found"
        body = json.dumps({"cause": "x", "message": message, "response": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _served(handler, client_class):
    """A docker-py client of ``client_class`` talking to ``handler`` on loopback, until closed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c = client_class(base_url=f"tcp://127.0.0.1:{server.server_address[1]}", version="1.41")
    yield c
    c.close()
    server.shutdown()


@pytest.fixture(scope="module")
def client():
    yield from _served(_Podman, docker.APIClient)


def test_podmans_500_for_a_removed_container_becomes_not_found(client):
    with removed_container_is_not_found():
        with pytest.raises(errors.NotFound):
            client.inspect_container("gone")
    assert any(p.endswith("/containers/gone/json") for p in _Podman.requests)


def test_without_it_podmans_answer_is_the_plain_api_error_kfp_does_not_catch(client):
    with pytest.raises(errors.APIError) as exc:
        client.inspect_container("gone")
    assert not isinstance(exc.value, errors.NotFound)
    assert exc.value.response.status_code == 500


def test_other_errors_are_unchanged(client):
    with removed_container_is_not_found():
        with pytest.raises(errors.APIError) as exc:
            client.inspect_container("broken")
        assert not isinstance(exc.value, errors.NotFound) and "out of disk" in exc.value.explanation
        with pytest.raises(errors.NotFound):
            client.inspect_container("missing")  # Docker's own 404 still NotFound


def test_the_mapping_ends_with_the_block(client):
    with removed_container_is_not_found():
        pass
    with pytest.raises(errors.APIError) as exc:
        client.inspect_container("gone")
    assert not isinstance(exc.value, errors.NotFound)


# ------------------------------------------------------------------------ the exit status kfp reads
class _Engine(BaseHTTPRequestHandler):
    """The container calls of kfp's DockerRunner, answered as podman 4 does: a container created
    with AutoRemove is gone as soon as it has started (it exits at once: every task here exits
    with status 3), and then each call about it is podman's 500 "no such container"."""

    containers: dict[str, dict] = {}
    calls: list[tuple[str, str]] = []

    def _send(self, status: int, payload=None, raw: bytes | None = None):
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/vnd.docker.raw-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _cid(self) -> str:
        return self.path.split("/containers/")[1].split("/")[0].split("?")[0]

    def _gone(self) -> bool:
        c = self.containers.get(self._cid())
        if c is None or c["removed"]:
            self._send(500, {"cause": "no such container", "message": f"container {self._cid()} does not exist in "
                                                                       "database: no such container", "response": 500})
            return True
        return False

    def _route(self, method: str):
        path = self.path.split("?")[0]
        type(self).calls.append((method, path.split("/", 2)[-1]))
        if method == "GET" and path.endswith("/images/json"):
            return self._send(200, [{"Id": "sha256:" + "a" * 64, "RepoTags": ["vce:test"], "RepoDigests": []}])
        if method == "POST" and path.endswith("/containers/create"):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            cid = f"{len(self.containers):064x}"
            self.containers[cid] = {"auto_remove": body["HostConfig"].get("AutoRemove", False),
                                    "labels": body.get("Labels") or {}, "removed": False}
            return self._send(201, {"Id": cid, "Warnings": []})
        if method == "GET" and path.endswith("/containers/json"):
            live = [{"Id": cid, "Labels": c["labels"], "State": "exited"} for cid, c in self.containers.items() if not c["removed"]]
            return self._send(200, live)
        if method == "GET" and "/images/" in path and path.endswith("/json"):  # docker-py inspects each listed image
            return self._send(200, {"Id": "sha256:" + "a" * 64, "RepoTags": ["vce:test"], "RepoDigests": []})
        if "/containers/" not in path:
            return self._send(404, {"message": f"not in the stand-in: {method} {path}"})
        if self._gone():
            return None
        c = self.containers[self._cid()]
        if method == "GET" and path.endswith("/json"):
            return self._send(200, {"Id": self._cid(), "Name": "/task", "Config": {"Tty": False, "Labels": c["labels"]},
                                    "State": {"Status": "exited", "ExitCode": 3}})
        if method == "POST" and path.endswith("/start"):
            c["removed"] = c["auto_remove"]  # it exited at once, and podman removed it
            return self._send(204)
        if method == "GET" and path.endswith("/logs"):
            line = b"task failed\n"
            return self._send(200, raw=bytes([2, 0, 0, 0]) + len(line).to_bytes(4, "big") + line)
        if method == "POST" and path.endswith("/wait"):
            return self._send(200, {"StatusCode": 3, "Error": None})
        if method == "DELETE":
            c["removed"] = True
            return self._send(204)
        return self._send(404, {"message": f"not in the stand-in: {method} {path}"})

    def do_GET(self):  # noqa: N802
        self._route("GET")

    def do_POST(self):  # noqa: N802
        self._route("POST")

    def do_DELETE(self):  # noqa: N802
        self._route("DELETE")

    def log_message(self, *args):
        pass


@pytest.fixture()
def engine():
    _Engine.containers, _Engine.calls = {}, []
    yield from _served(_Engine, docker.DockerClient)


def _kfp_runs_a_failing_task(client) -> int:
    """kfp's own DockerRunner code (2.17) on a task whose container exits with status 3."""
    from kfp.local.docker_task_handler import run_docker_container

    return run_docker_container(client, "vce:test", ["sh", "-c", "exit 3"], volumes={})


def test_kfp_alone_reads_an_auto_removed_failing_task_as_success(engine):
    """The failure this guards against: with only podman's 500 read as 404, kfp gets exit status 0."""
    from vce.podman_compat import removed_container_is_not_found

    with removed_container_is_not_found():
        assert _kfp_runs_a_failing_task(engine) == 0


def test_the_real_exit_status_reaches_kfp_and_the_container_is_removed_after(engine):
    from vce.podman_compat import TASK_LABEL, docker_runner_compat

    with docker_runner_compat():
        assert _kfp_runs_a_failing_task(engine) == 3
    ((cid, c),) = _Engine.containers.items()
    assert c["auto_remove"] is False and c["labels"] == {TASK_LABEL: "1"} and c["removed"]
    order = [m for m, p in _Engine.calls if p.startswith(f"containers/{cid}/wait") or (m == "DELETE" and cid in p)]
    assert order == ["POST", "DELETE"]  # removed only once its exit status was read
    from docker.models.containers import ContainerCollection

    assert ContainerCollection.run.__qualname__ == "ContainerCollection.run"  # restored after the block


def test_stale_task_containers_are_removed(engine):
    from vce.podman_compat import TASK_LABEL, remove_stale_task_containers

    engine.containers.create("vce:test", "true", labels={TASK_LABEL: "1"})
    assert len(remove_stale_task_containers(engine)) == 1
    assert all(c["removed"] for c in _Engine.containers.values())
    (query,) = [p for m, p in _Engine.calls if p.startswith("containers/json")]
    assert remove_stale_task_containers(engine) == []
