"""Podman's Docker-compatible API, made to answer like Docker where kfp depends on it.

kfp's DockerRunner starts each component with ``auto_remove=True`` and then streams its logs
and waits for it, treating ``docker.errors.NotFound`` (HTTP 404: the container is gone) as
"it already exited". Docker answers 404 there. Podman (4.x), while it is still removing an
exited container, answers **500** "container ... does not exist in database: no such
container" (podman issues #6083, #10225, #17341), which docker-py raises as a plain
``APIError`` and kfp does not catch: a task that finishes quickly fails the whole DAG.

:func:`removed_container_is_not_found` maps exactly that answer to ``NotFound`` for as long
as it is active, and logs which container it was. Nothing else changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: The words of podman's answer for a container it is removing or has removed.
PODMAN_GONE = "no such container"


def _is_podman_gone(response) -> bool:
    """True for podman's HTTP 500 about a container that no longer exists."""
    if response is None or response.status_code != 500:
        return False
    try:
        message = response.json().get("message", "")
    except ValueError:
        message = response.text or ""
    return PODMAN_GONE in str(message).lower()


@contextlib.contextmanager
def removed_container_is_not_found() -> Iterator[None]:
    """While active, docker-py raises ``NotFound`` (as Docker's 404 would) for podman's 500 on a
    container being auto-removed; every other error is raised as before."""
    import docker.api.client as api_client
    from docker import errors

    original = api_client.create_api_error_from_http_exception

    def create(e):
        if _is_podman_gone(e.response):
            logger.info("the container runtime removed a finished container before its logs or exit "
                        "status were read (%s): treated as Docker's 404", e.response.url.rsplit("/", 2)[-2][:12])
            raise errors.NotFound(e, response=e.response, explanation=PODMAN_GONE) from e
        return original(e)

    api_client.create_api_error_from_http_exception = create
    try:
        yield
    finally:
        api_client.create_api_error_from_http_exception = original
