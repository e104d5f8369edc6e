"""The model cache: a replica starts from the cached scorer alone; the cached pipeline is the fallback."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from serving_support import decided

from reggaeton import decision_record
from reggaeton.data import features_array, split, synthetic_dataset
from reggaeton.model import build_pipeline
from reggaeton.schema import TARGET
from reggaeton.scorer import REBUILT, TOLERANCE, verification_rows
from reggaeton.servable import examples_array
from serving import cache as cache_module
from serving.cache import CACHE_FILE, MODEL_FILE, ModelCache
from serving.holder import ModelCheckError, ServedModel, prepared

NAME = "reggaeton-classifier"
_DATA = split(synthetic_dataset(600, seed=7), 0.3, seed=7)
# One of each rebuilt estimator and step the project's families use.
_MODELS = {
    "baseline": {"n_estimators": 40},
    "hist_gradient_boosting": {"max_iter": 20},
    "random_forest": {"n_estimators": 10},
    "logistic_regression": {},
}
HEAVY = ("sklearn", "imblearn", "scipy", "pandas")
KEY = decision_record.generate()
TRUSTED = decision_record.VerifyKeys.of([KEY.public])

_LOAD = """
import json, sys
from pathlib import Path
import numpy as np
from reggaeton.decision_record import VerifyKeys
from serving.cache import ModelCache
rows = np.load(sys.argv[1])
trusted = VerifyKeys.parse(sys.argv[3])
out = {}
for folder in sys.argv[4:]:
    served = ModelCache(Path(folder)).load(sys.argv[2], trusted)
    out[folder] = {"kind": served.scorer_kind, "model": served.model is not None,
                   "p": served.probabilities(rows).tolist()}
heavy = [name for name in %r if name in sys.modules]
print(json.dumps({"loaded": out, "heavy": heavy}))
"""


def _decided(version: str) -> dict[str, Any]:
    return decided(NAME, version, KEY)


def _prepared(family: str, version: str = "1", threshold: float = 0.5) -> ServedModel:
    pipeline = build_pipeline(family, _MODELS[family], seed=0)
    pipeline.fit(features_array(_DATA.train), _DATA.train[TARGET])
    loaded_at = datetime.now().astimezone()
    served = ServedModel(
        NAME, version, "run", pipeline, threshold, loaded_at, "registry", **_decided(version)
    )
    return prepared(served)


def test_a_replica_starts_from_the_cached_scorer_without_scikit_learn(tmp_path: Path) -> None:
    rows = verification_rows(examples_array(), rows=64, seed=3)
    np.save(tmp_path / "rows.npy", rows)
    expected = {}
    for family in _MODELS:
        served = _prepared(family)
        assert served.scorer_kind == REBUILT, family
        ModelCache(tmp_path / family).save(served)
        expected[str(tmp_path / family)] = served.model.predict_proba(rows)[:, 1]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD % (HEAVY,),
            str(tmp_path / "rows.npy"),
            NAME,
            KEY.public_text(),
            *expected,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    for folder, pipeline_p in expected.items():
        loaded = report["loaded"][folder]
        assert loaded["kind"] == REBUILT and not loaded["model"], folder
        np.testing.assert_allclose(loaded["p"], pipeline_p, rtol=0, atol=TOLERANCE)


def test_a_scorer_from_other_code_is_rebuilt_from_the_cached_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = _prepared("hist_gradient_boosting", version="3")
    cache = ModelCache(tmp_path)
    cache.save(served)
    monkeypatch.setattr(cache_module, "scorer_code", lambda: "another version of reggaeton/scorer.py")
    loaded = cache.load(NAME, TRUSTED)
    assert loaded is not None and loaded.version == "3" and loaded.source == "cache"
    assert loaded.model is not None and loaded.scorer_kind == REBUILT  # verified again against it
    rows = examples_array()
    np.testing.assert_allclose(loaded.probabilities(rows), served.probabilities(rows), rtol=0, atol=TOLERANCE)
    (tmp_path / MODEL_FILE).unlink()  # without its pipeline, that scorer is not used
    assert cache.load(NAME, TRUSTED) is None


def test_a_scorer_that_cannot_be_read_is_rebuilt_from_the_cached_pipeline(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    cache.save(_prepared("random_forest", version="5"))
    payload = joblib.load(tmp_path / CACHE_FILE)
    joblib.dump({**payload, "scorer": b"not a pickle"}, tmp_path / CACHE_FILE)  # e.g. a class renamed since
    loaded = cache.load(NAME, TRUSTED)
    assert loaded is not None and loaded.version == "5"
    assert loaded.model is not None and loaded.scorer_kind == REBUILT


def test_a_pipeline_file_of_another_version_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ModelCache(tmp_path)
    cache.save(_prepared("logistic_regression", version="1"))
    newer = ModelCache(tmp_path / "newer")
    newer.save(_prepared("logistic_regression", version="2"))
    # As a crash between the two writes of version 2 leaves it: its pipeline beside version 1's scorer.
    (tmp_path / "newer" / MODEL_FILE).replace(tmp_path / MODEL_FILE)
    loaded = cache.load(NAME, TRUSTED)
    assert loaded is not None and loaded.version == "1" and loaded.model is None  # the scorer alone serves
    monkeypatch.setattr(cache_module, "scorer_code", lambda: "other")
    assert cache.load(NAME, TRUSTED) is None  # and version 2's pipeline is not taken for version 1's


def test_a_cached_model_is_checked_again_before_it_is_served(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    served: Any = _prepared("logistic_regression")
    cache.save(
        ServedModel(
            NAME, "4", None, None, 1.5, served.loaded_at, "registry", scorer=served.scorer, **_decided("4")
        )
    )
    with pytest.raises(ModelCheckError, match="threshold"):
        cache.load(NAME, TRUSTED)
    assert ModelCache(tmp_path / "empty").load(NAME, TRUSTED) is None


def test_a_cached_model_serves_only_with_a_decision_the_server_trusts(tmp_path: Path) -> None:
    served = _prepared("logistic_regression", version="6")
    cache = ModelCache(tmp_path)
    cache.save(served)
    assert cache.load(NAME, TRUSTED) is not None
    # After a key rotation that dropped the signing key, or with no key at all, the cache is not trusted.
    assert cache.load(NAME, decision_record.VerifyKeys.of([decision_record.generate().public])) is None
    assert cache.load(NAME, decision_record.VerifyKeys()) is None
    # A cached version whose record names another version (a tampered cache) is not served.
    cache.save(dataclasses.replace(served, **_decided("7")))
    assert cache.load(NAME, TRUSTED) is None
    # A model cached without a decision (older code) is not served from the cache.
    cache.save(dataclasses.replace(served, decision=None, signature=None))
    assert cache.load(NAME, TRUSTED) is None
