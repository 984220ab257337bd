"""Real servers for the infra tests, on 127.0.0.1 only, each on a free port, stopped with its process group.

`servers(prefect_server(home), mlflow_auth_server(root))` runs a Prefect server (SQLite in a temporary
PREFECT_HOME) and MLflow's basic-auth app (SQLite stores) and yields their URLs; `process` starts any
long-running command (a Prefect worker) with its output in a log file that a failure message can quote.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
ADMIN = ("admin", "admin-password-for-tests")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow/Prefect/DVC/git settings of the caller, offline and on one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "DVC_", "GIT_", "SCLORA_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1",
        MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com", **extra,
    )  # fmt: skip
    return env


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextmanager
def process(command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """`command` running in its own process group until the block ends; its output goes to `log`."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace_s: float = 5) -> None:
    """SIGTERM to the process group, SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Poll `url` until it answers (any HTTP status); fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before answering {url}:\n{log_tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except urllib.error.HTTPError:
            return  # it answered (401 from an auth server is an answer)
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} within {timeout_s} s:\n{log_tail(log)}")


@dataclass
class Server:
    """How to start a server and how to know that it is up."""

    command: list[str]
    env: dict[str, str]
    log: Path
    url: str
    health: str


@contextmanager
def servers(*specs: Server) -> Iterator[list[str]]:
    """Start every server at once (they start slowly on a busy machine), wait for each; yields their URLs."""
    with ExitStack() as stack:
        procs = [stack.enter_context(process(spec.command, spec.log, spec.env)) for spec in specs]
        for spec, proc in zip(specs, procs, strict=True):
            wait_until_up(spec.health, proc, spec.log)
        yield [spec.url for spec in specs]


def prefect_server(home: Path) -> Server:
    """`prefect server start` on a free loopback port, its SQLite database in `home`; its URL is the API's."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = base_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}")  # fmt: skip
    command = [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port), "--no-services"]
    url = f"http://{HOST}:{port}/api"
    return Server(command, env, home / "server.log", url, f"{url}/health")


def mlflow_auth_server(root: Path) -> Server:
    """`mlflow server --app-name basic-auth` on a free loopback port, its stores in `root`.

    The admin is ADMIN; tracking and users live in SQLite files, artifacts in a folder (proxied).
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request's password check is a deliberately slow hash; cache a verified one for the test.
        "auth_cache_ttl_seconds = 600\n",
        encoding="utf-8",
    )
    # No job runner: its huey consumers (MLflow's GenAI jobs, which sclora never submits) poll at a CPU's cost.
    env = base_env(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_USERNAME=ADMIN[0],
                   MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1], MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret",
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # fmt: skip
    command = [
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", HOST, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", (root / "artifacts").as_uri(), "--workers", "1",
    ]  # fmt: skip
    url = f"http://{HOST}:{port}"
    return Server(command, env, root / "server.log", url, f"{url}/health")
