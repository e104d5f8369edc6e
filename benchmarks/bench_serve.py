"""Benchmark the prediction server against ``mlflow models serve`` and a bare FastAPI endpoint.

The server runs three times: as configured by default (every answered row journaled before its
response), with ``durable_log`` off, to show what durability costs, and with a challenger under live
evaluation that shadow-scores every request (``live.shadow_share`` 1), to show what the shadow costs:
each on a registry of its own, so only the third has a challenger to shadow.

All serve single-song JSON POSTs to wrk (a separate load process) at the same concurrency, on the
same registered version, side by side in one run. Prints requests/s, p50 and p99 (median over rounds)
and the ratios against the targets. Requires ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``).

Usage: ``make bench-serve`` or ``python benchmarks/bench_serve.py --duration 10 --rounds 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from reggaeton.schema import EXAMPLE_SONGS

REPO_ROOT = Path(__file__).resolve().parents[1]
SONG = EXAMPLE_SONGS[0]
TARGET_VS_MLFLOW = 8.0
SMOTE_TRUSTED_TYPES = [
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
]
TARGET_VS_BARE = 0.85  # issue 27: the hot path pays for nothing it does not need
TARGET_P99_MS = 25.0
TARGET_DURABLE_VS_OFF = 0.9
TARGET_SHADOW_VS_OFF = 0.85  # throughput with the shadow on every request vs the same server without
TARGET_SHADOW_P99_MS = 2.0  # p99 added by the shadow, at most


@dataclass
class Result:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bare_app() -> object:
    """The floor of the HTTP stack: FastAPI, an ``async def`` returning a constant, no body parsing."""
    from fastapi import FastAPI

    app = FastAPI()
    constant: dict[str, object] = {
        "predictions": [{"id": "x", "probability": 0.5, "label": 0, "model_version": "1"}]
    }

    @app.post("/predict")
    async def predict() -> dict[str, object]:
        return constant

    return app


def _serve_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(_bare_app(), host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False)  # type: ignore[arg-type]


def _register_champion(state: Path, challenger: bool = False) -> str:
    """Fit the data scientist's baseline on the synthetic sample and register it as champion.

    With ``challenger``, register it a second time as a challenger under shadow evaluation, which every
    server on this registry then scores beside the champion.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from adapters import registry
    from reggaeton import decision_record, live, names
    from reggaeton.data import features_array, split, synthetic_dataset
    from reggaeton.model import baseline_pipeline
    from reggaeton.schema import FEATURE_NAMES, PROBABILITY, TARGET
    from reggaeton.settings import Settings

    settings = Settings(state_dir=state)
    client = registry.connect(settings)
    data = split(synthetic_dataset(2300, seed=42), 0.25, seed=42)
    pipeline = baseline_pipeline(seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    features = data.holdout[list(FEATURE_NAMES)]
    proba = pipeline.predict_proba(features.to_numpy(dtype=float))[:, 1]
    with mlflow.start_run(experiment_id=experiment_id):
        # As registry.log_model, plus the types of the fitted SMOTE's neighbour index, which
        # registry.SKOPS_TRUSTED_TYPES does not list yet.
        info = mlflow.sklearn.log_model(
            pipeline,
            name=names.MODEL_ARTIFACT_NAME,
            signature=infer_signature(features, pd.Series(proba, name=PROBABILITY)),
            input_example=features.head(2),
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=[*registry.SKOPS_TRUSTED_TYPES, *SMOTE_TRUSTED_TYPES],
        )
    version = registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: 0.5})
    # The API serves (and shadows) only what a signed decision says: sign as an operator would, with the
    # state folder's own key pair (the servers read its public half).
    _sign(settings, client, str(version.version), decision_record.PROMOTED)
    client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version.version)
    if challenger:
        shadowed = registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: 0.5})
        _sign(settings, client, str(shadowed.version), live.SHADOW)
        client.set_registered_model_alias(names.MODEL_NAME, names.CHALLENGER, shadowed.version)
    return settings.tracking_uri


def _sign(settings: Any, client: Any, version: str, outcome: str) -> None:
    """An operator's signed decision about ``version``: promoted (champion) or shadow (challenger)."""
    from adapters import decisions, keys
    from reggaeton import decision_record, names

    decisions.sign_decision(
        client,
        keys.ensure_local_keys(settings),
        model=names.MODEL_NAME,
        version=version,
        action=decision_record.MANUAL,
        outcome=outcome,
        previous_champion=None,
        evaluation=None,
        evidence=decision_record.evidence_of({"benchmark": version}, "bench-serve"),
        policy={},
        decided_by="bench-serve",
        decided_at=decisions.now(),
    )


@contextlib.contextmanager
def _process(
    cmd: list[str], env: dict[str, str], ready_url: str, log: Path, timeout_s: float = 300
) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]} not ready in {timeout_s} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _wrk(url: str, body: object, duration_s: int, connections: int, scripts: Path) -> Result:
    script = scripts / f"post-{abs(hash(json.dumps(body)))}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Result(rps, p50, p99, errors)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per server (median reported)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        _serve_bare(args.bare_server)
        return 0
    if shutil.which("wrk") is None:
        sys.stderr.write("wrk is required for this benchmark: on Debian/Ubuntu `apt-get install -y wrk`.\n")
        return 2

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        state = Path(tmp) / "state"
        sys.stderr.write("registering the baseline model as champion...\n")
        tracking_uri = _register_champion(state)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGGAETON_")}
        env.update(
            {
                "REGGAETON_STATE_DIR": str(state),
                "MLFLOW_TRACKING_URI": tracking_uri,
                "NML_DISABLE_USAGE_LOGGING": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "REGGAETON_LOG_LEVEL": "WARNING",
                # mlflow models serve starts `uvicorn` from PATH: the one beside this interpreter.
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        shadow_state = Path(tmp) / "shadow-on"
        shadow_uri = _register_champion(shadow_state, challenger=True)
        names = (
            "this server",
            "this server, durability off",
            "this server, shadow on",
            "mlflow models serve",
            "bare FastAPI",
        )
        ports = {name: _free_port() for name in names}
        ours_env = {**env, "REGGAETON_SERVING__PORT": str(ports["this server"])}
        # The same server without its journal (rows only in memory until written), on a log of its own.
        off = Path(tmp) / "durability-off"
        off_env = {
            **env,
            "REGGAETON_SERVING__PORT": str(ports["this server, durability off"]),
            "REGGAETON_SERVING__DURABLE_LOG": "false",
            "REGGAETON_SERVING__PREDICTION_LOG_URL": f"sqlite:///{off / 'predictions.db'}",
            "REGGAETON_SERVING__MODEL_CACHE_DIR": str(off / "model-cache"),
        }
        off.mkdir()
        # The same server beside a challenger it shadow-scores on every request (its own registry).
        shadow_env = {
            **env,
            "REGGAETON_STATE_DIR": str(shadow_state),
            "MLFLOW_TRACKING_URI": shadow_uri,
            "REGGAETON_SERVING__PORT": str(ports["this server, shadow on"]),
            "REGGAETON_LIVE__SHADOW_SHARE": "1.0",
        }
        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        servers: dict[str, tuple[list[str], dict[str, str], str, str, object]] = {
            "this server": (
                [sys.executable, "-m", "serving"],
                ours_env,
                f"http://127.0.0.1:{ports['this server']}/ready",
                f"http://127.0.0.1:{ports['this server']}/predict",
                SONG,
            ),
            "this server, durability off": (
                [sys.executable, "-m", "serving"],
                off_env,
                f"http://127.0.0.1:{ports['this server, durability off']}/ready",
                f"http://127.0.0.1:{ports['this server, durability off']}/predict",
                SONG,
            ),
            "this server, shadow on": (
                [sys.executable, "-m", "serving"],
                shadow_env,
                f"http://127.0.0.1:{ports['this server, shadow on']}/ready",
                f"http://127.0.0.1:{ports['this server, shadow on']}/predict",
                SONG,
            ),
            "mlflow models serve": (
                [
                    mlflow_bin,
                    "models",
                    "serve",
                    "-m",
                    "models:/reggaeton-classifier@champion",
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(ports["mlflow models serve"]),
                    "--workers",
                    "1",
                ],
                env,
                f"http://127.0.0.1:{ports['mlflow models serve']}/ping",
                f"http://127.0.0.1:{ports['mlflow models serve']}/invocations",
                {"dataframe_records": [SONG]},
            ),
            "bare FastAPI": (
                [sys.executable, str(Path(__file__).resolve()), "--bare-server", str(ports["bare FastAPI"])],
                env,
                f"http://127.0.0.1:{ports['bare FastAPI']}/docs",
                f"http://127.0.0.1:{ports['bare FastAPI']}/predict",
                SONG,
            ),
        }
        results: dict[str, list[Result]] = {name: [] for name in servers}
        scripts = Path(tmp)
        with contextlib.ExitStack() as stack:
            for name, (cmd, server_env, ready, _, _) in servers.items():
                sys.stderr.write(f"starting {name}...\n")
                stack.enter_context(_process(cmd, server_env, ready, Path(tmp) / f"{ports[name]}.log"))
            for url, body in ((spec[3], spec[4]) for spec in servers.values()):
                check = httpx.post(url, json=body, timeout=30)
                check.raise_for_status()
                _wrk(url, body, 2, args.connections, scripts)  # warm-up
            ours_metrics = servers["this server"][3].replace("/predict", "/metrics")
            for round_ in range(args.rounds):
                for name, (_, _, _, url, body) in servers.items():
                    result = _wrk(url, body, args.duration, args.connections, scripts)
                    sys.stderr.write(
                        f"round {round_ + 1} {name}: {result.requests_per_s:,.0f} req/s, "
                        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors}\n"
                    )
                    results[name].append(result)
            text = httpx.get(ours_metrics, timeout=30).text
            scorer = httpx.get(ours_metrics.replace("/metrics", "/model"), timeout=30).json()["scorer"]
            stats = {
                key: float(value)
                for key, value in re.findall(
                    r"^(reggaeton_\w+?(?:_sum|_count|_total)) (\S+)$", text, re.MULTILINE
                )
            }
            shadow_text = httpx.get(
                servers["this server, shadow on"][3].replace("/predict", "/metrics"), timeout=30
            ).text
            shadow_rows = {
                outcome: float(value)
                for outcome, value in re.findall(
                    r'^reggaeton_shadow_rows_total\{outcome="(\w+)"\} (\S+)$', shadow_text, re.MULTILINE
                )
            }
            answered = sum(
                float(value)
                for value in re.findall(
                    r"^reggaeton_predictions_total\{[^}]*\} (\S+)$", shadow_text, re.MULTILINE
                )
            )
            sys.stderr.write(
                f"shadow on: {answered:,.0f} rows answered, "
                f"{shadow_rows.get('scored', 0):,.0f} shadow-scored, "
                f"{shadow_rows.get('shed', 0):,.0f} shed, {shadow_rows.get('written', 0):,.0f} written, "
                f"{shadow_rows.get('dropped', 0):,.0f} dropped\n"
            )
            calls = stats.get("reggaeton_model_batch_rows_count", 0.0)
            rows_scored = stats.get("reggaeton_model_batch_rows_sum", 0.0)
            sys.stderr.write(
                f"this server: scorer {scorer}, {rows_scored / max(calls, 1):.1f} rows per model call, "
                f"log queue full {stats.get('reggaeton_prediction_log_queue_full_total', 0):.0f} times, "
                f"{stats.get('reggaeton_prediction_log_rows_written_total', 0):.0f} rows logged\n"
            )

    def median(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results[name])

    ours, ours_off, shadow_on, mlflow_rps, bare = (median(n, "requests_per_s") for n in servers)
    p99 = median("this server", "p99_ms")
    shadow_p99 = median("this server, shadow on", "p99_ms") - p99
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    _say(f"\nServing benchmark, {when}, {platform.machine()}, {os.cpu_count()} cores,")
    _say(f"one-song POSTs, wrk -t1 -c{args.connections}, {args.duration} s x {args.rounds} rounds (median)\n")
    _say("| server | req/s | p50 ms | p99 ms | errors |")
    _say("|---|---|---|---|---|")
    for name in servers:
        errors = sum(r.errors for r in results[name])
        _say(
            f"| {name} | {median(name, 'requests_per_s'):,.0f} | {median(name, 'p50_ms'):.1f} | "
            f"{median(name, 'p99_ms'):.1f} | {errors} |"
        )
    checks = [
        (
            f"throughput vs mlflow models serve: {ours / mlflow_rps:.1f}x",
            ours / mlflow_rps >= TARGET_VS_MLFLOW,
            f">= {TARGET_VS_MLFLOW:g}x",
        ),
        (
            f"throughput vs bare FastAPI: {ours / bare:.2f}x",
            ours / bare >= TARGET_VS_BARE,
            f">= {TARGET_VS_BARE:g}x",
        ),
        (f"p99 of this server: {p99:.1f} ms", p99 <= TARGET_P99_MS, f"<= {TARGET_P99_MS:g} ms"),
        (
            f"throughput with the durable journal vs without: {ours / ours_off:.2f}x",
            ours / ours_off >= TARGET_DURABLE_VS_OFF,
            f">= {TARGET_DURABLE_VS_OFF:g}x",
        ),
        (
            f"throughput with the shadow on every request vs without: {shadow_on / ours:.2f}x",
            shadow_on / ours >= TARGET_SHADOW_VS_OFF,
            f">= {TARGET_SHADOW_VS_OFF:g}x",
        ),
        (
            f"p99 added by the shadow: {shadow_p99:+.1f} ms",
            shadow_p99 <= TARGET_SHADOW_P99_MS,
            f"<= +{TARGET_SHADOW_P99_MS:g} ms",
        ),
    ]
    _say()
    for text, ok, target in checks:
        _say(f"- {text} (target {target}): {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
