"""Whether a model version may be served: the one rule the gate and the server both apply.

A version is servable when it carries a decision threshold in [0, 1] (the ``reggaeton.threshold`` tag)
and the scorer the server would call (rebuilt if verified, else the pipeline's own ``predict_proba``)
gives finite probabilities in [0, 1] for the challenge's example songs. The gate refuses what serving
would refuse, and times the same scorer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reggaeton import names
from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES
from reggaeton.scorer import Scorer, choose_scorer, verification_rows


class NotServableError(ValueError):
    """A model version that must not be served; ``problems`` says why, one reason per item."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def examples_array() -> np.ndarray:
    """The challenge's example songs as a float array in schema order."""
    return np.array([[song[name] for name in FEATURE_NAMES] for song in EXAMPLE_SONGS], dtype=np.float64)


def threshold_from_tags(tags: Mapping[str, str], version: str) -> float:
    """The decision threshold a version carries.

    Raises:
        NotServableError: the tag is missing, not a number, or outside [0, 1].
    """
    raw = tags.get(names.Tag.THRESHOLD)
    try:
        threshold = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise NotServableError(
            [f"version {version} has no usable {names.Tag.THRESHOLD} tag (got {raw!r})"]
        ) from None
    problems = threshold_problems(threshold, version)
    if problems:
        raise NotServableError(problems)
    return threshold


def threshold_problems(threshold: float, version: str) -> list[str]:
    """What is wrong with a decision threshold (empty when it is a number in [0, 1])."""
    if math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
        return [f"version {version}: threshold {threshold} is outside [0, 1]"]
    return []


# How much of an exception's message a problem quotes: a model's message can quote its whole input (an
# encoder's unknown categories), and problems end up in tags, events and decision records.
PROBLEM_MESSAGE_CHARS = 300


def exception_text(exc: BaseException, limit: int = PROBLEM_MESSAGE_CHARS) -> str:
    """``Type: message`` of an exception, its message cut to ``limit`` characters."""
    message = str(exc)
    if len(message) > limit:
        message = f"{message[:limit]}... ({len(message)} characters)"
    return f"{type(exc).__name__}: {message}"


def example_problems(scorer: Scorer, version: str) -> list[str]:
    """Whether a scorer gives one finite probability in [0, 1] per example song."""
    examples = examples_array()
    try:
        proba = np.asarray(scorer.probabilities(examples))
    except Exception as exc:
        return [f"version {version}: cannot predict the example songs: {exception_text(exc)}"]
    if proba.shape != (len(examples),):
        return [f"version {version}: expected {len(examples)} probabilities, got shape {proba.shape}"]
    if not np.all(np.isfinite(proba)) or np.any((proba < 0) | (proba > 1)):
        return [f"version {version}: probabilities not finite in [0, 1]: {proba.tolist()}"]
    return []


def servable_scorer(model: Any, threshold: float, version: str) -> Scorer:
    """The scorer the server will call for this model, once the model is known to be servable.

    Blocking (scores a few hundred rows to verify a rebuilt scorer): call it off the event loop.

    Raises:
        NotServableError: naming every problem found.
    """
    scorer = choose_scorer(model, verification_rows(examples_array()))
    check_servable(scorer, threshold, version)
    return scorer


def check_servable(scorer: Scorer, threshold: float, version: str) -> None:
    """The servability rule for a scorer already chosen: its threshold, and the example songs' scores.

    Raises:
        NotServableError: naming every problem found.
    """
    problems = threshold_problems(threshold, version) + example_problems(scorer, version)
    if problems:
        raise NotServableError(problems)
