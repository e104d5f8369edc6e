"""Request and response schemas of the API, generated from the one feature schema in ``reggaeton.schema``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, create_model

from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES, FEATURES, Feature
from reggaeton.scorer import ScorerKind
from serving.refresher import Outcome


def _feature_field(feature: Feature) -> Any:
    low = feature.minimum
    example = EXAMPLE_SONGS[0][feature.name]
    if feature.exclusive_min:
        return (float, Field(description=feature.description, examples=[example], gt=low, le=feature.maximum))
    return (float, Field(description=feature.description, examples=[example], ge=low, le=feature.maximum))


# Strict floats: integers are numbers, strings and booleans are not; NaN and infinities are refused.
Song: Final = create_model(
    "Song",
    __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True),
    __doc__="The seven Spotify features of one song.",
    **{feature.name: _feature_field(feature) for feature in FEATURES},
)
SONG_ADAPTER: Final[TypeAdapter[Any]] = TypeAdapter(Song)
SONGS_ADAPTER: Final[TypeAdapter[Any]] = TypeAdapter(list[Song])


def request_body_schema(max_batch: int) -> dict[str, Any]:
    """OpenAPI request body for ``POST /predict``: one song or a list of songs, with the challenge's examples.

    Args:
        max_batch: The most songs one request may hold.
    """
    song_ref = {"$ref": "#/components/schemas/Song"}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "title": "PredictionRequest",
                    "anyOf": [
                        song_ref,
                        {"type": "array", "items": song_ref, "minItems": 1, "maxItems": max_batch},
                    ],
                },
                "examples": {
                    "one song": {"summary": "One song from the challenge", "value": EXAMPLE_SONGS[0]},
                    "several songs": {"summary": "A batch of songs", "value": list(EXAMPLE_SONGS)},
                },
            }
        },
    }


def song_json_schema() -> dict[str, Any]:
    """The JSON schema of one song, for the OpenAPI components."""
    return SONG_ADAPTER.json_schema(ref_template="#/components/schemas/{model}")


class Prediction(BaseModel):
    """The model's answer for one song."""

    id: str = Field(description="Prediction id; send it back to /feedback with the true label.")
    probability: float = Field(description="Probability that the song is reggaeton.")
    label: Literal[0, 1] = Field(description="1 = reggaeton (probability >= the version's threshold).")
    model_version: str


class PredictionResponse(BaseModel):
    """Predictions in request order (a list of one for a single song)."""

    predictions: list[Prediction]


def _integral_float_as_int(value: Any) -> Any:
    """JSON Schema's integers include ``1.0``: an integral float is that integer (strings stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class FeedbackRequest(BaseModel):
    """The true label of an earlier prediction."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(min_length=1, max_length=36)
    label: Annotated[int, BeforeValidator(_integral_float_as_int)] = Field(
        strict=True, ge=0, le=1, description="1 = reggaeton, 0 = not."
    )


class FeedbackResponse(BaseModel):
    """Whether this call recorded the label (False: the same label was already recorded)."""

    prediction_id: str
    label: int
    created: bool


class DecisionResponse(BaseModel):
    """The signed decision that made the served version champion (verified before it was served)."""

    sequence: int = Field(description="Strictly increasing per model: a newer champion has a higher one.")
    action: str = Field(description="gate, manual, rollback, live_gate or canary_step.")
    outcome: str
    previous_champion: str | None
    decided_by: str
    decided_at: str
    evidence_digest: str = Field(description="SHA-256 of the evidence the decision was based on.")
    summary: str
    key_id: str = Field(description="The public key that verified its signature.")


class ModelResponse(BaseModel):
    """The version being served."""

    name: str
    version: str
    run_id: str | None
    source: str = Field(description="'registry' or 'cache' (loaded from the local cache, e.g. MLflow down).")
    loaded_at: datetime
    threshold: float
    load_seconds: float = Field(description="Registry lookup, load and smoke check of this version.")
    scorer: ScorerKind = Field(
        description="'rebuilt' (the pipeline's steps as numpy operations, verified to reproduce it) or "
        "'pipeline' (the pipeline's own predict_proba)."
    )
    metrics: dict[str, float]
    features: list[str] = list(FEATURE_NAMES)
    decision: DecisionResponse | None = None


class ReloadResponse(BaseModel):
    """The outcome of one registry check."""

    outcome: Outcome
    version: str | None
    detail: str | None = None
