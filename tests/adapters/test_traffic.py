"""Reading labelled traffic before the prediction log exists."""

from __future__ import annotations

from pathlib import Path

from adapters import prediction_log
from adapters.traffic import read_labelled_traffic
from reggaeton.schema import FEATURE_NAMES, OBSERVED_AT, PREDICTION, PROBABILITY, TARGET
from reggaeton.settings import Settings


def test_no_log_yet_reads_as_no_traffic_and_creates_no_file(settings: Settings) -> None:
    log_file = Path(settings.prediction_log_url.removeprefix("sqlite:///"))
    traffic = read_labelled_traffic(settings)
    assert traffic.empty
    assert list(traffic.columns) == [
        prediction_log.PREDICTION_ID,
        prediction_log.CREATED_AT,
        prediction_log.MODEL_VERSION,
        *FEATURE_NAMES,
        PROBABILITY,
        PREDICTION,
        TARGET,
        OBSERVED_AT,  # the prediction's time in UTC: a training row's provenance
    ]
    assert not log_file.exists()
