"""Model pipelines: the data scientist's baseline, reproduced faithfully, and the tuned candidate families.

Every pipeline takes the seven features as a float array in schema order (``FEATURE_NAMES``) and is
fitted on arrays, so serving can call ``predict_proba`` on numpy without a DataFrame per request.
Resampling (SMOTE) lives inside the imbalanced-learn pipeline, so it only ever sees training folds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from reggaeton.schema import FEATURE_NAMES

if TYPE_CHECKING:
    from imblearn.pipeline import Pipeline as ImbPipeline

BASELINE: Final = "baseline"
HIST_GRADIENT_BOOSTING: Final = "hist_gradient_boosting"
LOGISTIC_REGRESSION: Final = "logistic_regression"
RANDOM_FOREST: Final = "random_forest"

# The original notebook's GradientBoostingClassifier settings (see the design).
BASELINE_PARAMS: Final[dict[str, Any]] = {
    "subsample": 0.8,
    "n_estimators": 300,
    "max_features": None,
    "min_samples_split": 106,
    "min_samples_leaf": 177,
}

# Class-imbalance handling of the tuned families, a hyper-parameter like any other (key ``imbalance``):
# nothing, balanced class weights, or SMOTE inside the pipeline (so it only ever sees training folds).
IMBALANCE: Final = "imbalance"
NO_REBALANCING: Final = "none"
CLASS_WEIGHT: Final = "class_weight"
SMOTE_RESAMPLING: Final = "smote"
IMBALANCE_CHOICES: Final = (NO_REBALANCING, CLASS_WEIGHT, SMOTE_RESAMPLING)

_SCALED_BY_NOTEBOOK = [FEATURE_NAMES.index("tempo"), FEATURE_NAMES.index("loudness")]


def _smote_pipeline(steps: list[tuple[str, Any]], model: Any, seed: int) -> ImbPipeline:
    """``steps``, SMOTE, then the model, in imbalanced-learn's pipeline.

    Imported here, when such a pipeline is built: importing imbalanced-learn imports scikit-learn's test
    utilities (~0.7 s of CPU), which every flow run, command and server otherwise paid at start. Loading a
    fitted one imports it through pickle.
    """
    from imblearn.over_sampling import SMOTE
    from imblearn.pipeline import Pipeline as ImbPipeline

    return ImbPipeline([*steps, ("smote", SMOTE(random_state=seed)), ("model", model)])


def baseline_pipeline(seed: int = 0, **overrides: Any) -> ImbPipeline:
    """The data scientist's model: min-max scaling of tempo and loudness, SMOTE, gradient boosting.

    Unlike the notebook, the scaler and SMOTE are fitted inside the pipeline (on training folds only).
    """
    scale = ColumnTransformer(
        [("minmax", MinMaxScaler(), _SCALED_BY_NOTEBOOK)],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    params = {**BASELINE_PARAMS, **overrides}
    return _smote_pipeline([("scale", scale)], GradientBoostingClassifier(random_state=seed, **params), seed)


def _with_imbalance(
    steps: list[tuple[str, Any]], model: Any, imbalance: str, seed: int
) -> Pipeline | ImbPipeline:
    """Append the estimator, preceded by SMOTE (imbalanced-learn pipeline) when asked for."""
    if imbalance == SMOTE_RESAMPLING:
        return _smote_pipeline(steps, model, seed)
    return Pipeline([*steps, ("model", model)])


def _split_imbalance(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    rest = dict(params)
    imbalance = str(rest.pop(IMBALANCE, NO_REBALANCING))
    if imbalance not in IMBALANCE_CHOICES:
        raise ValueError(f"unknown {IMBALANCE} {imbalance!r}; known: {', '.join(IMBALANCE_CHOICES)}")
    if imbalance == CLASS_WEIGHT:
        rest["class_weight"] = "balanced"
    return imbalance, rest


def _hist_gradient_boosting(params: Mapping[str, Any], seed: int) -> Pipeline | ImbPipeline:
    imbalance, rest = _split_imbalance(params)
    return _with_imbalance([], HistGradientBoostingClassifier(random_state=seed, **rest), imbalance, seed)


def _logistic_regression(params: Mapping[str, Any], seed: int) -> Pipeline | ImbPipeline:
    imbalance, rest = _split_imbalance(params)
    model = LogisticRegression(random_state=seed, max_iter=2000, **rest)
    return _with_imbalance([("scale", StandardScaler())], model, imbalance, seed)


def _random_forest(params: Mapping[str, Any], seed: int) -> Pipeline | ImbPipeline:
    imbalance, rest = _split_imbalance(params)
    model = RandomForestClassifier(random_state=seed, n_jobs=1, **rest)
    return _with_imbalance([], model, imbalance, seed)


def _baseline(params: Mapping[str, Any], seed: int) -> ImbPipeline:
    return baseline_pipeline(seed=seed, **params)


PipelineFactory = Callable[[Mapping[str, Any], int], "Pipeline | ImbPipeline"]

FAMILIES: Final[dict[str, PipelineFactory]] = {
    BASELINE: _baseline,
    HIST_GRADIENT_BOOSTING: _hist_gradient_boosting,
    LOGISTIC_REGRESSION: _logistic_regression,
    RANDOM_FOREST: _random_forest,
}


def build_pipeline(family: str, params: Mapping[str, Any], seed: int) -> Any:
    """An unfitted pipeline of a family with the given hyper-parameters.

    ``params`` are the estimator's keyword arguments plus, for the tuned families, an optional
    ``imbalance`` key (one of ``IMBALANCE_CHOICES``).

    Raises:
        ValueError: for an unknown family.
    """
    try:
        factory = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None
    return factory(params, seed)
