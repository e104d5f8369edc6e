"""The ``score-catalogue`` flow: a whole catalogue scored by a registered version, on the work pool.

The same function as ``reggaeton score`` (``flows/batch_scoring.py``), with what the Prefect UI shows: a
progress artifact moved as chunks finish, a progress line in the run's logs as often, and a summary
artifact at the end. Paths are read on the worker that runs the flow: use absolute paths (or URLs) that
it can read and write, e.g. on a volume every worker shares.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging.loggers import PrefectLogAdapter
from prefect.runtime import flow_run

from flows import batch_scoring
from flows.batch_scoring import ScoringModel, ScoringRequest, ScoringResult
from reggaeton import names
from reggaeton.batch import Progress
from reggaeton.settings import Settings


class ArtifactProgress:
    """Moves the run's progress artifact and logs a progress line, at most every ``every_s`` seconds."""

    def __init__(self, artifact_id: UUID, every_s: float) -> None:
        self._artifact_id = artifact_id
        self._every_s = every_s
        self._shown = -float("inf")
        logger = get_run_logger()
        self._log = logger.getChild(names.PROGRESS_LOG) if isinstance(logger, PrefectLogAdapter) else logger

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._shown < self._every_s:
            return
        self._shown = now
        self.show(progress)

    def show(self, progress: Progress) -> None:
        """Move the artifact and log the line now."""
        if progress.fraction is not None:
            update_progress_artifact(self._artifact_id, progress=round(100 * progress.fraction, 1))
        self._log.info(progress.line())


@task(cache_policy=NO_CACHE)
def load_version(settings: Settings, request: ScoringRequest) -> ScoringModel:
    """The version that scores, checked by the API's servability rule."""
    return batch_scoring.load_version(settings, request)


@task(cache_policy=NO_CACHE)
def score_chunks(settings: Settings, request: ScoringRequest, model: ScoringModel) -> ScoringResult:
    """Plan (or continue) the run, score every chunk not yet done, publish the output."""
    # Called from sync code, Prefect's async-dispatching function returns the id itself.
    artifact = cast(
        UUID,
        create_progress_artifact(
            0.0,
            key=names.SCORE_PROGRESS_ARTIFACT_KEY,
            description=f"Scoring {request.input} with {model.name} v{model.version}",
        ),
    )
    progress = ArtifactProgress(artifact, settings.batch.progress_every_s)
    with batch_scoring.planned(settings, request, model) as plan:
        if plan.finished is not None:
            result = ScoringResult(request.out, plan.finished, already_done=True)
        else:
            tags = {names.Tag.FLOW_RUN_ID: str(flow_run.get_id() or "")}
            result = batch_scoring.run(settings, plan, model, progress, tags)
    update_progress_artifact(artifact, progress=100.0)
    return result


@task(cache_policy=NO_CACHE)
def publish_summary(result: ScoringResult) -> None:
    """The run's counts, version and output as a markdown artifact."""
    manifest = result.manifest
    counts, model, timings = result.counts, manifest["model"], manifest["timings"]
    output = manifest["output"]
    rows = [
        ("input", f"`{manifest['input']['source']}` (sha256 `{manifest['input']['sha256'][:12]}`)"),
        ("model", f"{model['name']} version {model['version']}, threshold {model['threshold']:g}"),
        ("rows", f"{counts.read:,} read, {counts.scored:,} scored, {counts.rejected:,} rejected"),
        ("output", f"`{result.out}` ({len(output['parts'])} part(s), `{output['rejects']}`)"),
        ("time", f"{timings['seconds']:.1f} s, {timings['rows_per_s']:,.0f} rows/s"),
        ("attempts", f"{timings['attempts']} ({timings['resumed_chunks']} chunk(s) done by earlier ones)"),
        ("MLflow run", f"`{manifest['mlflow_run_id']}`"),
    ]
    create_markdown_artifact(
        key=names.SCORE_ARTIFACT_KEY,
        markdown="\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]),
        description=f"Catalogue scored by {model['name']} v{model['version']}",
    )


@flow(name=names.SCORE_DEPLOYMENT)
def score_catalogue(
    input: str,
    out: str,
    version: str | None = None,
    alias: str | None = None,
    output_format: str = "parquet",
    id_columns: list[str] | None = None,
    restart: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Score a CSV/Parquet catalogue (a file or a folder) with a registered version (default: champion).

    Args:
        input: A file or a folder of files, an absolute path on the worker or an fsspec URL.
        out: The output folder (absolute path on the worker); a run stopped midway continues there.
        version: The registered version; default: the version behind ``alias``.
        alias: Default: champion.
        output_format: parquet or csv.
        id_columns: Input columns passed through; default: id, id_*, *_id.
        restart: Discard a partial run of this output instead of continuing it.
        settings: Default: from the environment.
    """
    settings = settings or Settings()
    request = ScoringRequest(
        input=input,
        out=Path(out),
        version=version,
        alias=alias,
        output_format=output_format,
        id_columns=None if id_columns is None else tuple(id_columns),
        restart=restart,
    )
    model = load_version(settings, request)
    result = score_chunks(settings, request, model)
    publish_summary(result)
    get_run_logger().info(result.summary())
    return {"out": str(result.out), "already_done": result.already_done, **result.manifest["counts"]}
