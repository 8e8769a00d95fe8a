"""Podman's Docker-compatible API, made to answer like Docker where kfp depends on it, and kfp's
DockerRunner made to read every task's real exit status.

kfp's DockerRunner starts each component with ``auto_remove=True`` and then streams its logs
and waits for it, treating ``docker.errors.NotFound`` (HTTP 404: the container is gone) as
"it already exited". Docker answers 404 there. Podman (4.x), while it is still removing an
exited container, answers **500** "container ... does not exist in database: no such
container" (podman issues #6083, #10225, #17341), which docker-py raises as a plain
``APIError`` and kfp does not catch: a task that finishes quickly fails the whole DAG.

:func:`removed_container_is_not_found` maps exactly that answer to ``NotFound`` for as long
as it is active, and logs which container it was. Nothing else changes.

kfp reads a container that is already gone when it waits for it as **exit status 0** (with Docker
too): an auto-removed task that fails fast would pass, and the DAG would go on with its empty
outputs. :func:`exit_status_kept` starts kfp's containers without ``auto_remove``, labelled
:data:`TASK_LABEL`, and removes each once its exit status has been read (or its wait was
interrupted); :func:`remove_stale_task_containers` removes the exited ones a killed study left.
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


#: The label of every task container started under :func:`exit_status_kept`.
TASK_LABEL = "org.vce-project.kfp-task"


@contextlib.contextmanager
def exit_status_kept() -> Iterator[None]:
    """While active, a detached container started with ``auto_remove=True`` (kfp's DockerRunner)
    starts without it, labelled :data:`TASK_LABEL`, and is removed (forcibly, so an interrupted
    wait also stops it) when its ``wait()`` returns or raises: kfp gets the real exit status."""
    from docker.models.containers import ContainerCollection

    original = ContainerCollection.run

    def run(self, image, command=None, stdout=True, stderr=False, remove=False, **kwargs):
        if not (kwargs.get("detach") and kwargs.get("auto_remove")):
            return original(self, image, command, stdout, stderr, remove, **kwargs)
        kwargs["auto_remove"] = False
        kwargs["labels"] = {**dict(kwargs.get("labels") or {}), TASK_LABEL: "1"}
        container = original(self, image, command, stdout, stderr, remove, **kwargs)
        _remove_after_wait(container)
        return container

    ContainerCollection.run = run
    try:
        yield
    finally:
        ContainerCollection.run = original


def _remove_after_wait(container) -> None:
    """``container.wait()`` removes the container once it has returned (or raised)."""
    from docker import errors

    wait = container.wait

    def wait_then_remove(**kwargs):
        try:
            return wait(**kwargs)
        finally:
            try:
                container.remove(force=True)
            except errors.NotFound:
                pass

    container.wait = wait_then_remove


def remove_stale_task_containers(client) -> list[str]:
    """Remove the exited or never-started :data:`TASK_LABEL` containers (a killed study's; running
    ones may be another study's); returns their short ids."""
    stale = client.containers.list(all=True, filters={"label": TASK_LABEL, "status": ["exited", "created"]})
    for c in stale:
        c.remove(force=True)
    if stale:
        logger.info("removed %d task container(s) a stopped study left: %s", len(stale), ", ".join(c.short_id for c in stale))
    return [c.short_id for c in stale]


@contextlib.contextmanager
def docker_runner_compat() -> Iterator[None]:
    """Both: podman's 500 read as Docker's 404, and every task's real exit status."""
    with removed_container_is_not_found(), exit_status_kept():
        yield
