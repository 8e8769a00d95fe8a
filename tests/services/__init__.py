"""Real services on loopback for tests: PostgreSQL (the distribution's server binaries), an
S3-compatible object store (moto's standalone server) and an MLflow tracking server on both.

Each is a context manager that starts the service on a free 127.0.0.1 port, waits until it
answers, yields a small description of it and stops it (and removes its files) afterwards::

    with postgres() as pg, s3_server("bucket") as s3, \\
            mlflow_server(pg.uri, f"s3://{s3.bucket}/mlflow", s3.env, workdir) as srv:
        ...  # srv.uri is http://127.0.0.1:PORT

Nothing here is a stand-in: PostgreSQL is Debian's ``postgresql`` package (``apt-get install -y
postgresql``; its ``initdb`` refuses root, so as root the cluster runs as the ``postgres`` system
user), moto's server speaks the S3 REST API that boto3 and MLflow's S3 artifact repository use,
and MLflow is the pinned ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
BIN = Path(sys.executable).parent  # the project venv's scripts (mlflow, moto_server)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 120.0,
               proc: subprocess.Popen | None = None, logfile: Path | None = None) -> float:
    """Poll ``ready()`` (exceptions count as not ready) until it is true; returns the seconds it
    took. Raises with the service's log tail when ``proc`` exits or ``timeout`` passes."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(Exception):
            if ready():
                return time.monotonic() - t0
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = logfile.read_text(errors="replace")[-3000:] if logfile and logfile.exists() else ""
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else f"not ready after {timeout:.0f} s"
    raise RuntimeError(f"{what} {state}\n{tail}")


def http_ok(url: str, expect: bytes | None = None) -> bool:
    """True when GET ``url`` answers 200 (and its body contains ``expect``)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status == 200 and (expect is None or expect in r.read())


def _stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


# ------------------------------------------------------------------------------------ PostgreSQL
def postgres_bindir() -> Path:
    """The PostgreSQL server binaries: ``$VCE_PG_BINDIR``, else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian), else the directory of ``initdb`` on PATH."""
    candidates = [os.environ.get("VCE_PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    found = shutil.which("initdb")
    candidates += [str(Path(found).parent)] if found else []
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: install them with "
                       "`apt-get install -y postgresql` (Debian) or set VCE_PG_BINDIR")


@dataclass
class Postgres:
    """A running PostgreSQL cluster: ``database`` owned by ``user`` (password auth on 127.0.0.1)."""

    port: int
    user: str
    password: str
    database: str
    root: Path

    @property
    def uri(self) -> str:
        """SQLAlchemy URI (what ``mlflow server --backend-store-uri`` takes)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def connect(self) -> Any:
        """A psycopg (3) connection to the database (autocommit)."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               dbname=self.database, connect_timeout=10, autocommit=True)


def _as_cluster_owner() -> dict[str, Any]:
    """subprocess keywords that run a command as the ``postgres`` system user when we are root
    (initdb and postgres refuse root), and as ourselves otherwise."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@contextlib.contextmanager
def postgres(database: str = "mlflow", user: str = "mlflow") -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (random free port, scram-sha-256 password
    auth over TCP, socket in its own directory), with ``database`` owned by the login ``user``
    (a random password); stopped and deleted on exit."""
    import psycopg
    from psycopg import sql

    bindir = postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="vce-pg-"))  # not under pytest's 0700 tmp: the postgres user must reach it
    owner = _as_cluster_owner()
    if owner:
        shutil.chown(root, "postgres", "postgres")
    superpw, password, port = secrets.token_hex(12), secrets.token_hex(12), free_port()
    data, logfile = root / "data", root / "postgres.log"
    pwfile = root / "pw"
    pwfile.write_text(superpw + "\n")
    if owner:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"],
                       check=True, capture_output=True, text=True, cwd=root, **owner)
        pwfile.unlink()
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB")
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", opts, "-w", "-t", "60", "start"],
                       check=True, capture_output=True, text=True, cwd=root, **owner)
        log.info("PostgreSQL %s on 127.0.0.1:%d (%s)", bindir.parent.name, port, data)
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=superpw, dbname="postgres",
                             autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)))
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(user)))
        yield Postgres(port, user, password, database, root)
    except subprocess.CalledProcessError as exc:
        tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
        raise RuntimeError(f"PostgreSQL failed: {exc.cmd[0]}: {exc.stderr}\n{tail}") from exc
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, cwd=root, **owner)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------ S3 (moto)
@dataclass
class S3:
    """A running S3-compatible endpoint with ``bucket`` created; ``env`` holds what an S3
    client needs (endpoint, dummy credentials, region)."""

    endpoint: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Any:
        """A boto3 S3 client on this endpoint."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextlib.contextmanager
def s3_server(bucket: str, workdir: Path | None = None) -> Iterator[S3]:
    """moto's standalone S3 server on 127.0.0.1 (random free port) with ``bucket`` created by
    boto3; stopped on exit."""
    exe = BIN / "moto_server"
    if not exe.is_file():
        raise RuntimeError(f"{exe} not found: pip install -r requirements.txt (moto[server])")
    port = free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="vce-s3-"))
    logfile = workdir / "moto.log"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with open(logfile, "wb") as fh:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=workdir, env={**os.environ, **env}, start_new_session=True)
    try:
        s3 = S3(f"http://127.0.0.1:{port}", bucket, {**env, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        took = wait_until(lambda: s3.client().list_buckets() is not None, "moto_server", 60, proc, logfile)
        s3.client().create_bucket(Bucket=bucket)
        log.info("S3 (moto) on %s after %.1f s, bucket %s", s3.endpoint, took, bucket)
        yield s3
    finally:
        _stop_group(proc)


# ------------------------------------------------------------------------------------ MLflow
@dataclass
class MlflowServer:
    """A running ``mlflow server``: its URI, log file and how long it took to answer."""

    uri: str
    logfile: Path
    startup_s: float


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_destination: str, env: dict[str, str], workdir: Path,
                  timeout: float = 180.0) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1 (random free port, one worker, no job execution) with the
    backend store ``backend_uri`` and ``--serve-artifacts`` to ``artifacts_destination``: clients
    send artifacts through the server (``mlflow-artifacts:/``), only the server holds the object
    store's ``env``. Ready when ``/health`` answers; stopped on exit."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = workdir / "mlflow-server.log"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
           "--artifacts-destination", artifacts_destination, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    server_env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(logfile, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, env=server_env,
                                start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        took = wait_until(lambda: http_ok(f"{uri}/health", b"OK"), "mlflow server", timeout, proc, logfile)
        log.info("MLflow server %s up after %.1f s (store %s, artifacts %s)", uri, took,
                 backend_uri.split("@")[-1], artifacts_destination)
        yield MlflowServer(uri, logfile, took)
    finally:
        _stop_group(proc)
