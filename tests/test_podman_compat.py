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


@pytest.fixture(scope="module")
def client():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Podman)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c = docker.APIClient(base_url=f"tcp://127.0.0.1:{server.server_address[1]}", version="1.41")
    yield c
    c.close()
    server.shutdown()


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
