"""The served model: one immutable reference to (version, model, threshold, metadata), swapped whole."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from reggaeton.decision_record import DecisionRecord
from reggaeton.scorer import Scorer, ScorerKind, pipeline_scorer
from reggaeton.servable import NotServableError, check_servable, servable_scorer


class ModelCheckError(RuntimeError):
    """A loaded model that must not be served (it fails to predict sensibly on the example songs)."""


@dataclass(frozen=True, eq=False)
class ServedModel:
    """Everything a request needs from one model version; never mutated after it is built."""

    name: str
    version: str
    run_id: str | None
    model: Any  # the pipeline; None when served from the model cache's rebuilt scorer alone
    threshold: float
    loaded_at: datetime
    source: str  # "registry" or "cache"
    metrics: Mapping[str, float] = field(default_factory=dict)
    load_seconds: float = 0.0  # registry lookup + load + smoke check
    # How the model is called (reggaeton/scorer.py); the model's own predict_proba unless :func:`prepared`
    # chose a rebuilt one. Carried over by dataclasses.replace.
    scorer: Scorer | None = field(default=None, repr=False)
    # The signed decision that made this version champion (verified before it was served) and its
    # signature: a later champion must carry a newer one.
    decision: DecisionRecord | None = None
    signature: str | None = field(default=None, repr=False)

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


def prepared(served: ServedModel) -> ServedModel:
    """A loaded model ready to serve: the core's servability rule applied, its scorer chosen.

    Blocking (scores a few hundred rows): call it off the event loop.

    Raises:
        ModelCheckError: the model must not be served (the same rule the gate applies).
    """
    try:
        scorer = servable_scorer(served.model, served.threshold, served.version)
    except NotServableError as exc:
        raise ModelCheckError(str(exc)) from exc
    return dataclasses.replace(served, scorer=scorer)


def checked(served: ServedModel) -> ServedModel:
    """A model whose scorer was chosen before (the model cache's), checked again on the example songs.

    Raises:
        ModelCheckError: the model must not be served (the threshold or the example songs' scores).
    """
    assert served.scorer is not None  # set in __post_init__
    try:
        check_servable(served.scorer, served.threshold, served.version)
    except NotServableError as exc:
        raise ModelCheckError(str(exc)) from exc
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
