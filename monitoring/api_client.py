"""The one place that knows the prediction API's HTTP contract (``POST /predict``, ``POST /feedback``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Served:
    """One song's answer from ``POST /predict``."""

    prediction_id: str
    probability: float
    label: int
    model_version: str


class PredictionApi:
    """A small synchronous client of the prediction API."""

    def __init__(
        self, base_url: str, feedback_token: str, timeout_s: float = 10.0, api_key: str | None = None
    ) -> None:
        """A client sending labels with ``feedback_token`` and, when given, ``api_key`` with predictions."""
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s, trust_env=False, headers=headers
        )
        self._feedback = {"Authorization": f"Bearer {feedback_token}"}

    def __enter__(self) -> PredictionApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def predict(self, songs: Sequence[dict[str, float]]) -> list[Served]:
        """Score a batch of songs (a list body); raises ``httpx.HTTPStatusError`` on a refusal."""
        response = self._client.post("/predict", json=list(songs))
        response.raise_for_status()
        body: Any = response.json()
        # The API answers {"predictions": [{"id", "probability", "label", "model_version"}, ...]}.
        return [
            Served(
                prediction_id=str(item["id"]),
                probability=float(item["probability"]),
                label=int(item["label"]),
                model_version=str(item["model_version"]),
            )
            for item in body["predictions"]
        ]

    def feedback(self, prediction_id: str, label: int) -> None:
        """Record the true label of an earlier prediction."""
        response = self._client.post(
            "/feedback", json={"prediction_id": prediction_id, "label": int(label)}, headers=self._feedback
        )
        response.raise_for_status()
