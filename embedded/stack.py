"""`reggaeton up|down|status`: the embedded local stack as processes with PID files.

Starts, on 127.0.0.1 and with all state in the state folder: the Prefect server (its own PREFECT_HOME,
analytics off), the MLflow server (SQLite + local artifacts, ``--serve-artifacts``), the alert receiver,
a Prefect process worker on the work pool, and the API. A second ``up`` reuses what is running; ``down``
stops exactly the processes ``up`` started, by the PIDs recorded in ``<state>/pids/``. ``up`` records
the stack's endpoints in ``<state>/stack.json``, where the ``reggaeton`` command line finds them.

``up`` creates the decision signing keys in ``<state>/keys`` (the API verifies champions with the public
one) and, on a registry that predates signed decisions, signs its champion once ("adopted"), so an
upgraded stack keeps serving it. Nothing here is authenticated: every service listens on 127.0.0.1 only,
and whoever can run processes as this user can read the state folder, keys included (see the runbook).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import BaseModel, SecretStr

from adapters import processes
from embedded import receiver
from reggaeton import names
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

# A service without a health URL that is still alive this long after its start counts as started.
SETTLE_S = 3.0
# How long `down` waits, after handing a stopped worker's runs back, for the Prefect server to take the
# hand-back in before it is stopped (its event persister flushes at least every 5 s).
HAND_BACK_SETTLE_S = 15.0


@dataclass(frozen=True)
class Service:
    """One process of the stack: how to start it, how to know it is ready, and how to know it is one."""

    name: str
    command: Callable[[Settings], list[str]]
    health_url: Callable[[Settings], str | None]
    startup_timeout_s: float = 120.0
    # Whether an answer of the health URL comes from this kind of server: another program on the port
    # answers too (macOS's AirPlay receiver holds 5000), and `up` must not take it for this service.
    answered_by_it: Callable[[httpx.Response], bool] = lambda answer: answer.status_code == 200
    port_setting: str = ""  # the settings field of its port, e.g. "mlflow.port", named in errors
    environment: Mapping[str, str] = field(default_factory=dict)  # on top of stack_environment's


class PortHeld(RuntimeError):
    """A service's port answers, but not as that service: ``up`` starts nothing."""


def _env_of(field: str) -> str:
    return "REGGAETON_" + field.upper().replace(".", "__")


def _answer_text(answer: httpx.Response) -> str:
    server = answer.headers.get("server")
    body = " ".join(answer.text[:60].split())
    return f"HTTP {answer.status_code}" + (f" from server {server!r}" if server else "") + f": {body!r}"


def _prefect_health(answer: httpx.Response) -> bool:
    return answer.status_code == 200 and answer.text.strip() == "true"


def _mlflow_health(answer: httpx.Response) -> bool:
    """MLflow's /health says OK and its /version names a version (a bare "OK" is too common alone)."""
    if answer.status_code != 200 or answer.text.strip() != "OK":
        return False
    try:
        version = httpx.get(str(answer.url.copy_with(path="/version")), timeout=2.0)
    except httpx.HTTPError:
        return False
    return version.status_code == 200 and version.text.strip()[:1].isdigit()


def _header_says(header: str, value: str | None = None) -> Callable[[httpx.Response], bool]:
    def check(answer: httpx.Response) -> bool:
        found = answer.headers.get(header)
        return answer.status_code == 200 and found is not None and (value is None or found == value)

    return check


def mlflow_url(settings: Settings) -> str:
    """The local MLflow server the stack runs."""
    return f"http://{settings.mlflow.host}:{settings.mlflow.port}"


def stack_settings(settings: Settings) -> Settings:
    """The settings as the stack's processes see them (MLflow through the local server)."""
    if settings.mlflow.tracking_uri:
        return settings
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": mlflow_url(settings)})
    return settings.model_copy(update={"mlflow": mlflow})


def api_url(settings: Settings) -> str:
    """The API the stack runs."""
    return f"http://{settings.serving.host}:{settings.serving.port}"


def prefect_ui_url(settings: Settings) -> str:
    """The Prefect UI of the local server."""
    return f"http://{settings.prefect.host}:{settings.prefect.port}"


def receiver_url(settings: Settings) -> str:
    """The local alert receiver."""
    return f"http://127.0.0.1:{settings.prefect.alert_receiver_port}"


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):  # a list setting is JSON (e.g. promotion.slices, declared slices)
        return json.dumps([v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value])
    return str(value)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as REGGAETON_ variables: a child process rebuilds the same Settings from them."""
    env = {"REGGAETON_MODE": settings.mode, "REGGAETON_STATE_DIR": str(settings.state_path)}
    for section_name in Settings.model_fields:
        section = getattr(settings, section_name)
        if not isinstance(section, BaseModel):
            continue
        for field_name in type(section).model_fields:
            value = getattr(section, field_name)
            if value is not None:
                env[f"REGGAETON_{section_name}__{field_name}".upper()] = _env_value(value)
    return env


def stack_environment(settings: Settings) -> dict[str, str]:
    """Environment every stack process (and every flow run of the worker) gets.

    All parts see the same settings, talk to the same Prefect server and MLflow server and share one
    absolute state folder, so the working directory of a process does not matter.
    """
    env = dict(os.environ)
    env.update(settings_environment(settings))
    env.update(
        {
            "REGGAETON_MLFLOW__TRACKING_URI": settings.mlflow.tracking_uri or mlflow_url(settings),
            "PREFECT_API_URL": settings.prefect_api_url,
            "PREFECT_HOME": str(settings.prefect_home),
            **names.TELEMETRY_OFF,
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.prefect.heartbeat_s),
            "PREFECT_WORKER_QUERY_SECONDS": str(settings.prefect.worker_poll_s),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


SERVICES: tuple[Service, ...] = (
    Service(
        "prefect-server",
        lambda s: _python(
            "-m", "prefect", "server", "start", "--host", s.prefect.host, "--port", str(s.prefect.port)
        ),
        lambda s: f"{s.prefect_api_url}/health",
        startup_timeout_s=240.0,
        answered_by_it=_prefect_health,
        port_setting="prefect.port",
    ),
    Service(
        "mlflow",
        lambda s: _python(
            "-m",
            "mlflow",
            "server",
            "--host",
            s.mlflow.host,
            "--port",
            str(s.mlflow.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{s.state_path / 'mlflow.db'}",
            "--artifacts-destination",
            (s.state_path / "mlartifacts").as_uri(),
            "--serve-artifacts",
        ),
        lambda s: f"{mlflow_url(s)}/health",
        startup_timeout_s=180.0,
        answered_by_it=_mlflow_health,
        port_setting="mlflow.port",
        environment=names.MLFLOW_SERVER_ENV,
    ),
    Service(
        "receiver",
        lambda s: _python("-m", "embedded.receiver", "--port", str(s.prefect.alert_receiver_port)),
        lambda s: f"{receiver_url(s)}/health",
        answered_by_it=_header_says(names.SERVICE_HEADER, receiver.SERVICE),
        port_setting="prefect.alert_receiver_port",
    ),
    Service(
        "worker",
        lambda s: _python(
            "-m", "prefect", "worker", "start", "--pool", s.prefect.work_pool, "--type", "process"
        ),
        lambda s: None,
    ),
    Service("watchdog", lambda s: _python("-m", "monitoring.watchdog"), lambda s: None),
    Service(
        "api",
        lambda s: _python("-m", "serving"),
        lambda s: f"{api_url(s)}/health",
        startup_timeout_s=180.0,
        answered_by_it=_header_says(names.REPLICA_HEADER),
        port_setting="serving.port",
    ),
)
SERVICE_NAMES = tuple(service.name for service in SERVICES)


def pid_dir(settings: Settings) -> Path:
    """Where PID files live."""
    return settings.state_path / "pids"


def log_dir(settings: Settings) -> Path:
    """Where each process writes its output."""
    return settings.state_path / "logs"


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks (Linux), to tell our process from a recycled PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Record:
    """What a PID file holds."""

    name: str
    pid: int
    start_ticks: str | None
    command: list[str]
    policy: str | None = None  # the promotion policy (live.policy) its flows and gates run under

    def is_running(self) -> bool:
        """Our process is still there (same PID and, where knowable, same start time)."""
        if not processes.alive(self.pid):
            return False
        return self.start_ticks is None or _start_ticks(self.pid) == self.start_ticks


def record_path(settings: Settings, name: str) -> Path:
    """Where the PID file of a service is."""
    return pid_dir(settings) / f"{name}.json"


def read_record(settings: Settings, name: str) -> Record | None:
    """The PID file of a service, if any."""
    path = record_path(settings, name)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Record(
        data["name"], int(data["pid"]), data.get("start_ticks"), list(data["command"]), data.get("policy")
    )


def _write_record(settings: Settings, record: Record) -> None:
    path = record_path(settings, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record.__dict__))


def _responds(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code < 500
    except httpx.HTTPError:
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(
    service: Service, settings: Settings, record: Record, log_path: Path, settle_until: float
) -> None:
    """Until the service answers its health URL; one without a URL: until ``settle_until``, alive."""
    url = service.health_url(settings)
    deadline = time.monotonic() + service.startup_timeout_s
    while time.monotonic() < deadline:
        if not record.is_running():
            raise RuntimeError(
                f"{service.name} exited during start-up; last log lines:\n{_log_tail(log_path)}"
            )
        if url is None:
            if time.monotonic() >= settle_until:
                return
        elif _responds(url):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{service.name} not ready after {service.startup_timeout_s:.0f} s; see {log_path}")


def already_there(service: Service, settings: Settings, chosen: Collection[str] = ()) -> bool:
    """Whether this kind of service already answers at its URL (not started by this stack).

    Args:
        service: The service.
        settings: Where it answers.
        chosen: Services whose URL the user gave on purpose (e.g. ``MLFLOW_TRACKING_URI``): whatever
            answers there is theirs to choose.

    Raises:
        PortHeld: something else holds its port.
    """
    url = service.health_url(settings)
    if url is None:
        return False
    try:
        answer = httpx.get(url, timeout=2.0)
    except httpx.ConnectError:
        return False  # nothing listens: the port is free
    except httpx.HTTPError as exc:
        what = f"something that does not answer HTTP ({type(exc).__name__})"
    else:
        if service.answered_by_it(answer) or service.name in chosen:
            return True
        what = _answer_text(answer)
    port = httpx.URL(url).port
    raise PortHeld(
        f"port {port} ({service.name}) is held by another program, {what} at {url}; stop it, or give "
        f"the {service.name} another port: {_env_of(service.port_setting)}=<free port>"
    )


def _launch(service: Service, settings: Settings, chosen: Collection[str]) -> tuple[str, Record | None]:
    """Start one service unless it already runs, without waiting for it to be ready."""
    record = read_record(settings, service.name)
    if record is not None and record.is_running():
        return "reused", record
    if already_there(service, settings, chosen):
        logger.info(
            "%s already answers at %s (not started by this stack; down leaves it alone)",
            service.name,
            service.health_url(settings),
        )
        return "external", None
    log_path = log_dir(settings) / f"{service.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = service.command(settings)
    environment = {**stack_environment(settings), **service.environment}
    if service.name == "api":  # the API verifies decisions; only the deciding side holds the private key
        environment.pop("REGGAETON_SIGNING__PRIVATE_KEY", None)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: down stops it and its children together
        )
    record = Record(service.name, process.pid, _start_ticks(process.pid), command, settings.live.policy)
    _write_record(settings, record)
    logger.info("%s started (pid %d), log %s", service.name, process.pid, log_path)
    return "started", record


def start(services: Sequence[Service], settings: Settings, chosen: Collection[str] = ()) -> dict[str, str]:
    """Start services together, then wait until each is ready. Returns "started", "reused" or "external".

    A service that fails to become ready is stopped, and the error names it with the tail of its log.
    ``chosen``: see :func:`already_there`.
    """
    launched = {service.name: _launch(service, settings, chosen) for service in services}
    # Services without a health URL count as ready once alive for SETTLE_S, all from one moment (they
    # started together); one that was already running (reused) has settled long ago.
    settled_at = time.monotonic() + SETTLE_S
    for service in services:
        outcome, record = launched[service.name]
        if record is None:
            continue
        settle_until = settled_at if outcome == "started" else 0.0
        try:
            _wait_ready(service, settings, record, log_dir(settings) / f"{service.name}.log", settle_until)
        except Exception:
            if outcome == "started":
                stop(service.name, settings)
            raise
    return {name: outcome for name, (outcome, _) in launched.items()}


def _hand_back(settings: Settings) -> None:
    """Give the runs the stopped worker was submitting back to the schedule (the server still runs)."""
    # Prefect's client: imported only when a worker stopped.
    from adapters.prefect_api import hand_back_pending_runs, prefect_api

    try:
        with prefect_api(settings):
            # The embedded stack has one worker per pool: every Pending run of the pool was its own.
            # The server stops next: wait until its automations have seen the hand-back.
            handed = hand_back_pending_runs(settings.prefect.work_pool, settle_s=HAND_BACK_SETTLE_S)
    except Exception as exc:  # the server is down too: the stranded-run rule covers what is left
        logger.warning("could not hand back the worker's pending runs: %s", exc)
        return
    for run in handed:
        logger.info("worker: handed back run %s (it was being submitted)", run)


def stop(name: str, settings: Settings, timeout_s: float = 20.0) -> str:
    """Stop one service this stack started (by its recorded PID). Returns "stopped" or "not running"."""
    return stop_together([name], settings, timeout_s)[name]


def stop_together(names: Sequence[str], settings: Settings, timeout_s: float = 20.0) -> dict[str, str]:
    """Stop these services at once: SIGTERM to each, then one wait (SIGKILL for what outlives it).

    One at a time, a stop that needs its whole grace (a worker finishing a flow run, a server draining
    its connections) made ``down`` wait for the sum of them; together it waits for the longest.
    """
    records = {name: read_record(settings, name) for name in names}

    def alive(name: str, record: Record) -> bool:
        # The worker's flow runs may outlive it in its group; what is left there is ours to stop. A PID
        # another process holds now (not ours: is_running said so) leads a group that is not ours.
        return record.is_running() or (name == "worker" and processes.orphans_alive(record.pid))

    running = {name: record for name, record in records.items() if record is not None and alive(name, record)}
    for record in running.values():
        # The service leads its own session, so its group id is its PID: its children go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(alive(*item) for item in running.items()) and time.monotonic() < deadline:
        for record in running.values():
            _reap(record.pid)
        time.sleep(0.2)
    for name, record in running.items():
        if alive(name, record):
            logger.warning("%s still running %.0f s after SIGTERM: killed", name, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
        _reap(record.pid)
    outcome = {}
    for name in names:
        if records[name] is not None:
            record_path(settings, name).unlink(missing_ok=True)
        outcome[name] = "stopped" if name in running else "not running"
        if name == "worker" and name in running:
            _hand_back(settings)
        logger.info("%s: %s", name, outcome[name])
    return outcome


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our child (a same-process up/down, as in tests)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# Services of one phase start together; a phase starts when the previous one is ready.
PHASES: tuple[tuple[str, ...], ...] = (
    ("prefect-server", "mlflow", "receiver"),
    ("worker", "watchdog", "api"),
)


def endpoints_path(settings: Settings) -> Path:
    """Where ``up`` records the endpoints it serves, for the command line to find the running stack."""
    return settings.state_path / "stack.json"


def endpoints(settings: Settings) -> dict[str, str]:
    """The URLs of the stack these settings describe (as its own processes reach them)."""
    return {
        "mlflow": settings.mlflow.tracking_uri or mlflow_url(settings),
        "prefect_api": settings.prefect_api_url,
        "prefect_ui": prefect_ui_url(settings),
        "api": api_url(settings),
        "receiver": receiver_url(settings),
        "state_dir": str(settings.state_path),
    }


def read_endpoints(settings: Settings) -> dict[str, str] | None:
    """The endpoints the last ``up`` recorded in this state folder, or None."""
    path = endpoints_path(settings)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {str(key): str(value) for key, value in data.items()} if isinstance(data, dict) else None


def adopt_champion(settings: Settings) -> str | None:
    """Sign the champion once when the registry predates signed decisions (an upgraded stack).

    Returns:
        The adopted version, or None (nothing to adopt, or it failed: logged with what to run instead).
    """
    from adapters import decisions, keys, prefect_api, registry

    stacked = settings.model_copy(
        update={"mlflow": settings.mlflow.model_copy(update={"tracking_uri": endpoints(settings)["mlflow"]})}
    )
    try:
        key = keys.signing_key(settings)
        with prefect_api.prefect_api(settings), prefect_api.decision_lock():
            record = decisions.adopt_unsigned_champion(
                registry.connect(stacked), key, settings.mlflow.model_name, "reggaeton up (upgrade)"
            )
    except Exception as exc:  # the stack still starts; the API just does not serve the unsigned champion
        logger.warning(
            "could not sign the champion from before signed decisions (%s): the API serves it once "
            "`reggaeton promote --version <champion> --reason adopt` signs it",
            exc,
        )
        return None
    if record is None:
        return None
    logger.warning(
        "adopted champion version %s: the registry predates signed decisions, so it was signed once "
        "(decision %d); from now on only signed decisions make a champion",
        record.version,
        record.sequence,
    )
    return record.version


def up(
    settings: Settings, names: Sequence[str] = SERVICE_NAMES, chosen: Collection[str] = ()
) -> dict[str, str]:
    """Start the named services phase by phase; what is already running is reused.

    The stack's endpoints are recorded in ``<state>/stack.json`` first, so a command run while it
    starts already finds it; while a stack of this state folder runs, its record stays as it is. The
    signing keys exist before any service starts; a champion from before signed decisions is adopted
    once MLflow and Prefect answer, before the API starts.

    Raises:
        PortHeld: another program answers on a service's port (nothing is started); ``chosen`` names
            the services whose URL the user gave on purpose, used as they are.
    """
    from adapters import keys

    by_name = {service.name: service for service in SERVICES}
    # Every port first: a port held by another program stops `up` before anything is made or started.
    for name in names:
        record = read_record(settings, name)
        if record is None or not record.is_running():
            already_there(by_name[name], settings, chosen)
    settings.ensure_state_dir()
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    key = keys.signing_key(settings)  # the state folder's pair, created when missing
    if settings.signing.public_keys is None:
        keys.write_public(settings, key)  # what the API verifies with
    running = any(value.startswith("running") for value in status(settings).values())
    if not running or read_endpoints(settings) is None:
        endpoints_path(settings).write_text(json.dumps(endpoints(settings), indent=2) + "\n")
    outcome: dict[str, str] = {}
    for phase in PHASES:
        outcome.update(start([by_name[name] for name in phase if name in names], settings, chosen))
        if phase == PHASES[0] and {"mlflow", "prefect-server"} <= set(names):
            adopt_champion(settings)
    return outcome


def down(settings: Settings, names: Sequence[str] = SERVICE_NAMES) -> dict[str, str]:
    """Stop the named services that this stack started, phase by phase in reverse order.

    The recorded endpoints go when nothing of the stack is left running.
    """
    outcome: dict[str, str] = {}
    for phase in reversed(PHASES):  # each phase's services together, the later phase first
        outcome.update(stop_together([name for name in phase if name in names], settings))
    if not any(value.startswith("running") for value in status(settings).values()):
        endpoints_path(settings).unlink(missing_ok=True)
    return outcome


def status(settings: Settings) -> dict[str, str]:
    """Each service: "running (pid N)", or "stopped"."""
    result = {}
    for name in SERVICE_NAMES:
        record = read_record(settings, name)
        result[name] = f"running (pid {record.pid})" if record and record.is_running() else "stopped"
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Start or stop the local stack.")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("services", nargs="*", help=f"any of {', '.join(SERVICE_NAMES)} (default: all)")
    args = parser.parse_args(argv)
    if unknown := set(args.services) - set(SERVICE_NAMES):
        parser.error(f"unknown services: {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings()
    names = args.services or SERVICE_NAMES
    actions = {"up": up, "down": down, "status": lambda s, _names: status(s)}
    for name, what in actions[args.action](settings, names).items():
        logger.info("%-15s %s", name, what)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
