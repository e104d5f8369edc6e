"""Traffic simulator calibrated on the original data: ``python -m monitoring.simulate --scenario drift``.

Scenarios:
- ``stable``: songs from the calibrated profiles (``reggaeton.synthetic``), natural 3 % prior.
- ``drift``: a share of the songs is a new reggaeton sub-genre, faster, more acoustic and calmer:
  tempo, acousticness and energy move past other music's (1.5x the way from reggaeton to it), and
  danceability and speechiness most of the way there. The champion scores it like other music and is
  wrong (realized ROC-AUC about 0.98 -> 0.7), while it sits in a region of its own that a retrained
  model learns from the feedback labels (ROC-AUC about 0.96), so the loop has something to fix.
  Its scores stay confident, so CBPE's label-free estimate barely moves (an inherent limit of CBPE,
  which assumes the model stays calibrated); the drift detectors flag the shift at once and realized
  performance catches the damage as feedback labels arrive.

Over HTTP the simulator sends batches to ``POST /predict`` and, for a fraction of them, the true label
to ``POST /feedback`` after a delay; it stops after ``--count`` songs or ``--max-seconds``. In process,
``traffic``/``score``/``log_traffic`` give labelled frames and log rows without an API (tests, benchmark).
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import numpy as np
import pandas as pd
from sqlalchemy import Engine, insert

from adapters.prediction_log import CREATED_AT, MODEL_VERSION, PREDICTION_ID, feedback, predictions
from reggaeton import names, synthetic
from reggaeton.calibration import OTHER, REGGAETON, ClassProfile
from reggaeton.schema import FEATURE_NAMES, FEATURES_BY_NAME, PREDICTION, PROBABILITY, TARGET
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

SCENARIOS: Final = ("stable", "drift")
# How far (0 = reggaeton, 1 = other music, beyond 1 = past it) the sub-genre moves on each feature it
# changes. At 1.0 on every feature it would sit inside other music: no retrain could learn it.
SUBGENRE_SHIFT: Final[dict[str, float]] = {
    "tempo": 1.5,
    "acousticness": 1.5,
    "energy": 1.5,
    "danceability": 0.7,
    "speechiness": 0.7,
}
DRIFT_SHARE: Final = 0.3


def subgenre_profile(shift: dict[str, float] | None = None) -> ClassProfile:
    """A new reggaeton sub-genre: the reggaeton profile with some features moved toward other music."""
    shift = SUBGENRE_SHIFT if shift is None else shift

    def moved(name: str, a: float, b: float) -> float:
        # Past other music, a quantile may leave the feature's range: keep it a valid song.
        feature = FEATURES_BY_NAME[name]
        value = (1 - shift.get(name, 0.0)) * a + shift.get(name, 0.0) * b
        low = feature.minimum + 1e-3 if feature.exclusive_min else feature.minimum
        return float(min(max(value, low), feature.maximum))

    quantiles = {
        name: tuple(
            moved(name, a, b) for a, b in zip(REGGAETON.quantiles[name], OTHER.quantiles[name], strict=True)
        )
        for name in FEATURE_NAMES
    }
    return ClassProfile(quantiles=quantiles, spearman=REGGAETON.spearman)


def traffic(scenario: str, rows: int, seed: int, *, drift_share: float = DRIFT_SHARE) -> pd.DataFrame:
    """Labelled simulated songs (``FEATURE_NAMES`` + ``TARGET``) of a scenario, in arrival order."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if scenario == "stable":
        return synthetic.generate(rows, seed)
    rng = np.random.default_rng(seed)
    new = round(rows * drift_share)
    frame = pd.concat(
        [
            synthetic.generate(rows - new, seed),
            subgenre_profile().sample(new, rng).assign(**{TARGET: 1}),
        ],
        ignore_index=True,
    )
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def score(frame: pd.DataFrame, pipeline: Any, threshold: float) -> pd.DataFrame:
    """Add the champion's probability and prediction, as the API would log them."""
    out = frame.copy()
    out[PROBABILITY] = pipeline.predict_proba(out[list(FEATURE_NAMES)].to_numpy(dtype=np.float64))[:, 1]
    out[PREDICTION] = (out[PROBABILITY] >= threshold).astype("int64")
    return out


def log_traffic(
    engine: Engine,
    scored: pd.DataFrame,
    model_version: str,
    *,
    start: datetime,
    interval: timedelta,
    feedback_fraction: float,
    seed: int,
    model_name: str = names.MODEL_NAME,
    batch: int = 50_000,
) -> None:
    """Write scored songs to the prediction log as the API would, one every ``interval`` from ``start``,
    and their true label to ``feedback`` for a random ``feedback_fraction`` of them."""
    rng = np.random.default_rng(seed)
    n = len(scored)
    ids = [str(uuid.UUID(int=int(v), version=4)) for v in rng.integers(0, 2**63, size=n, dtype=np.int64)]
    times = pd.date_range(start=start, periods=n, freq=interval).to_pydatetime()
    values = {name: scored[name].to_numpy(dtype=np.float64) for name in (*FEATURE_NAMES, PROBABILITY)}
    predicted = scored[PREDICTION].to_numpy(dtype=np.int64)
    labelled = np.flatnonzero(rng.random(n) < feedback_fraction)
    labels = scored[TARGET].to_numpy(dtype=np.int64)
    with engine.begin() as connection:
        for first in range(0, n, batch):
            rows = [
                {
                    PREDICTION_ID: ids[i],
                    CREATED_AT: times[i],
                    "model_name": model_name,
                    MODEL_VERSION: model_version,
                    **{name: float(values[name][i]) for name in values},
                    PREDICTION: int(predicted[i]),
                }
                for i in range(first, min(first + batch, n))
            ]
            connection.execute(insert(predictions), rows)
        received = times[-1] if n else start
        for first in range(0, len(labelled), batch):
            connection.execute(
                insert(feedback),
                [
                    {"prediction_id": ids[i], "label": int(labels[i]), "received_at": received}
                    for i in labelled[first : first + batch]
                ],
            )


def send(
    api: Any,
    songs: pd.DataFrame,
    *,
    batch: int,
    feedback_fraction: float,
    feedback_delay_s: float,
    max_seconds: float,
    seed: int,
) -> dict[str, int]:
    """Send songs in batches to ``api.predict`` and delayed labels to ``api.feedback``; bounded in time.

    Returns:
        Counts: ``sent`` songs, ``labelled`` feedback calls, ``refused`` batches.
    """
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + max_seconds
    pending: deque[tuple[float, str, int]] = deque()
    counts = {"sent": 0, "labelled": 0, "refused": 0}
    records = songs[list(FEATURE_NAMES)].to_dict(orient="records")
    labels = songs[TARGET].to_numpy(dtype=np.int64)

    def flush_feedback(until: float) -> None:
        while pending and pending[0][0] <= until and time.monotonic() < deadline:
            _, prediction_id, label = pending.popleft()
            api.feedback(prediction_id, label)
            counts["labelled"] += 1

    for first in range(0, len(records), batch):
        if time.monotonic() >= deadline:
            logger.warning("time budget of %.0f s reached after %d songs", max_seconds, counts["sent"])
            break
        chunk: Sequence[dict[str, Any]] = records[first : first + batch]
        try:
            served = api.predict(chunk)
        except Exception as exc:  # a refused batch is counted, the run goes on
            logger.warning("batch at %d refused: %s", first, exc)
            counts["refused"] += 1
            continue
        counts["sent"] += len(served)
        due = time.monotonic() + feedback_delay_s
        for offset, answer in enumerate(served):
            if rng.random() < feedback_fraction:
                pending.append((due, answer.prediction_id, int(labels[first + offset])))
        flush_feedback(time.monotonic())
    # Labels still pending arrive after their delay, within the time budget.
    while pending and time.monotonic() < deadline:
        time.sleep(max(0.0, min(pending[0][0] - time.monotonic(), deadline - time.monotonic())))
        flush_feedback(time.monotonic())
    return counts


@dataclass(frozen=True)
class Run:
    """One simulation: which traffic, how much, and how it is sent."""

    scenario: str = "stable"
    count: int = 5000
    seed: int = 0
    batch: int = 100
    feedback_fraction: float = 0.3
    feedback_delay_s: float = 2.0
    max_seconds: float = 120.0
    drift_share: float = DRIFT_SHARE

    def problems(self) -> list[str]:
        """What is wrong with these options (empty when they can run)."""
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"unknown scenario {self.scenario!r} (choose from {', '.join(SCENARIOS)})")
        if self.count < 1 or self.batch < 1 or not 0 <= self.feedback_fraction <= 1 or self.max_seconds <= 0:
            problems.append(
                "--count and --batch must be >= 1, --feedback-fraction in [0, 1], --max-seconds > 0"
            )
        return problems


def run(url: str, feedback_token: str, options: Run, api_key: str | None = None) -> dict[str, int]:
    """Send one simulation's traffic (and late labels) to the API at ``url``; see :func:`send`.

    Args:
        url: The prediction API.
        feedback_token: The API's feedback token (labels).
        options: The simulation.
        api_key: The API's key for POST /predict, when it requires one.
    """
    from monitoring.api_client import PredictionApi

    songs = traffic(options.scenario, options.count, options.seed, drift_share=options.drift_share)
    with PredictionApi(url, feedback_token, api_key=api_key) as api:
        return send(
            api,
            songs,
            batch=options.batch,
            feedback_fraction=options.feedback_fraction,
            feedback_delay_s=options.feedback_delay_s,
            max_seconds=options.max_seconds,
            seed=options.seed,
        )


def credentials(settings: Settings) -> tuple[str, str | None]:
    """The feedback token and the API key (None when /predict needs none) of these settings."""
    key = settings.serving.api_key
    return settings.serving.feedback_token.get_secret_value(), key.get_secret_value() if key else None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (the demo's; operators use `reggaeton simulate`)."""
    settings = Settings()
    defaults = Run()
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.simulate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default=defaults.scenario)
    parser.add_argument("--count", type=int, default=defaults.count, help="songs to send (at most)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="songs per POST /predict")
    parser.add_argument("--feedback-fraction", type=float, default=defaults.feedback_fraction)
    parser.add_argument("--feedback-delay-s", type=float, default=defaults.feedback_delay_s)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds)
    parser.add_argument("--drift-share", type=float, default=defaults.drift_share)
    parser.add_argument(
        "--url", default=f"http://{settings.serving.host}:{settings.serving.port}", help="the prediction API"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request: thousands of them
    options = Run(**{name: getattr(args, name) for name in Run.__dataclass_fields__})
    problems = options.problems()
    if problems:
        parser.error("; ".join(problems))
    token, key = credentials(settings)
    counts = run(args.url, token, options, api_key=key)
    logger.info("scenario %s: %s", args.scenario, counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
