"""The served model: one immutable reference to (version, model, threshold, metadata), swapped whole."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from reggaeton.data import features_array
from reggaeton.schema import EXAMPLE_SONGS
from reggaeton.scorer import Scorer, ScorerKind, choose_scorer, pipeline_scorer, verification_rows


class ModelCheckError(RuntimeError):
    """A loaded model that must not be served (it fails to predict sensibly on the example songs)."""


@dataclass(frozen=True, eq=False)
class ServedModel:
    """Everything a request needs from one model version; never mutated after it is built."""

    name: str
    version: str
    run_id: str | None
    model: Any
    threshold: float
    loaded_at: datetime
    source: str  # "registry" or "cache"
    metrics: Mapping[str, float] = field(default_factory=dict)
    load_seconds: float = 0.0  # registry lookup + load + smoke check
    # How the model is called (reggaeton/scorer.py); the model's own predict_proba unless :func:`prepared`
    # chose a rebuilt one. Carried over by dataclasses.replace.
    scorer: Scorer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.scorer is None:
            object.__setattr__(self, "scorer", pipeline_scorer(self.model))

    @property
    def scorer_kind(self) -> ScorerKind:
        """``scorer.REBUILT`` or ``scorer.PIPELINE``."""
        assert self.scorer is not None  # set in __post_init__
        return self.scorer.kind

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Positive-class probabilities for a float array of songs in schema order."""
        assert self.scorer is not None  # set in __post_init__
        return self.scorer.probabilities(features)


def examples_array() -> np.ndarray:
    """The challenge's example songs as a float array in schema order."""
    return features_array(pd.DataFrame(list(EXAMPLE_SONGS)))


def smoke_check(served: ServedModel) -> None:
    """Refuse a model that cannot score the example songs with finite probabilities in [0, 1].

    Raises:
        ModelCheckError: naming what is wrong.
    """
    if not (0.0 <= served.threshold <= 1.0) or math.isnan(served.threshold):
        raise ModelCheckError(f"version {served.version}: threshold {served.threshold} is outside [0, 1]")
    examples = examples_array()
    try:
        proba = served.probabilities(examples)
    except Exception as exc:
        raise ModelCheckError(f"version {served.version}: predict_proba failed: {exc!r}") from exc
    if proba.shape != (len(examples),):
        raise ModelCheckError(
            f"version {served.version}: expected {len(examples)} probabilities, got {proba.shape}"
        )
    if not np.all(np.isfinite(proba)) or np.any((proba < 0) | (proba > 1)):
        raise ModelCheckError(
            f"version {served.version}: probabilities not finite in [0, 1]: {proba.tolist()}"
        )


def prepared(served: ServedModel) -> ServedModel:
    """A loaded model ready to serve: its scorer chosen (rebuilt if verified), then smoke-checked.

    Blocking (scores a few hundred rows): call it off the event loop.

    Raises:
        ModelCheckError: the model must not be served.
    """
    served = dataclasses.replace(
        served, scorer=choose_scorer(served.model, verification_rows(examples_array()))
    )
    smoke_check(served)
    return served


class ModelHolder:
    """Holds the one current :class:`ServedModel`; readers take the reference once per request."""

    def __init__(self) -> None:
        self._current: ServedModel | None = None

    @property
    def current(self) -> ServedModel | None:
        """The model being served, or None before the first successful load."""
        return self._current

    def swap(self, served: ServedModel) -> ServedModel | None:
        """Replace the served model (one reference assignment: no request sees a half-loaded model)."""
        previous, self._current = self._current, served
        return previous
