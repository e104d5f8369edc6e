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

    def __init__(self, base_url: str, admin_token: str, timeout_s: float = 10.0) -> None:
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, trust_env=False)
        self._admin = {"Authorization": f"Bearer {admin_token}"}

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
        items = body if isinstance(body, list) else body.get("predictions", [body])
        return [
            Served(
                prediction_id=str(item["prediction_id"]),
                probability=float(item["probability"]),
                label=int(item["label"]),
                model_version=str(item["model_version"]),
            )
            for item in items
        ]

    def feedback(self, prediction_id: str, label: int) -> None:
        """Record the true label of an earlier prediction."""
        response = self._client.post(
            "/feedback", json={"prediction_id": prediction_id, "label": int(label)}, headers=self._admin
        )
        response.raise_for_status()
