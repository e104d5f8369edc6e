"""The ``retention`` flow: prediction-log rows older than the retention period move to the archive.

Scheduled in prefect.yaml. Each run first finishes what an interrupted run left, then moves every live
table's old rows (predictions with their feedback, shadow answers) to partitioned Parquet files and
deletes them from the live log, counts checked (``adapters.log_archive``). The replicas' live counts
(``live_stats``, read by the live gate for the weeks a challenger is evaluated at most) older than the
cutoff are deleted, not archived.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from adapters import live_log, log_archive, prediction_log
from reggaeton import names
from reggaeton.settings import Settings


@dataclass(frozen=True)
class RetentionSummary:
    """What one run moved."""

    cutoff: datetime
    finished: int  # files an interrupted run had left half done
    moved: tuple[log_archive.Moved, ...]
    stats_deleted: int = 0  # live_stats rows older than the cutoff

    @property
    def archived(self) -> int:
        return sum(moved.archived for moved in self.moved)


@task(cache_policy=NO_CACHE)
def finish_interrupted(settings: Settings) -> int:
    """Files a crashed run left between writing and deleting: finished, or forgotten if not placed."""
    if prediction_log.missing_sqlite_file(settings.prediction_log_url):
        return 0
    engine = prediction_log.make_engine(settings.prediction_log_url)
    try:
        if not prediction_log.log_exists(engine):
            return 0
        return log_archive.recover(engine, settings.archive_path)
    finally:
        engine.dispose()


@task(cache_policy=NO_CACHE)
def archive_table(settings: Settings, table: str, cutoff: datetime) -> log_archive.Moved:
    """One live table's rows older than ``cutoff``, moved to the archive."""
    source = next(source for source in log_archive.SOURCES if source.name == table)
    if prediction_log.missing_sqlite_file(settings.prediction_log_url):
        return log_archive.Moved(table, 0, 0, 0, 0, 0, 0)
    engine = prediction_log.make_engine(settings.prediction_log_url)
    try:
        if not prediction_log.log_exists(engine):
            return log_archive.Moved(table, 0, 0, 0, 0, 0, 0)
        return log_archive.archive_source(
            engine, settings.archive_path, source, cutoff, settings.retention.part_rows
        )
    finally:
        engine.dispose()


@task(cache_policy=NO_CACHE)
def prune_live_stats(settings: Settings, cutoff: datetime) -> int:
    """The replicas' live counts older than ``cutoff``, deleted."""
    if prediction_log.missing_sqlite_file(settings.prediction_log_url):
        return 0
    engine = prediction_log.make_engine(settings.prediction_log_url)
    try:
        return live_log.prune_stats(engine, cutoff)
    finally:
        engine.dispose()


def _markdown(summary: RetentionSummary, settings: Settings) -> str:
    lines = [
        f"# Prediction log retention: rows before {summary.cutoff:%Y-%m-%d %H:%M:%S} UTC",
        f"Archive `{settings.archive_path}`; {summary.finished} interrupted file(s) finished first.",
        "",
        "| table | live before | older than cutoff | archived | live after | files |",
        "|---|---|---|---|---|---|",
        *(
            f"| {m.source} | {m.before} | {m.older} | {m.archived} | {m.kept} | {m.parts} |"
            for m in summary.moved
        ),
        "",
        f"Live counts (`live_stats`) older than the cutoff deleted: {summary.stats_deleted} rows.",
    ]
    return "\n".join(lines)


@flow(name=names.RETENTION_FLOW)
def retention(settings: Settings | None = None) -> RetentionSummary:
    """Archive and delete the prediction log's rows older than ``retention.keep_days``."""
    settings = settings or Settings()
    logger = get_run_logger()
    cutoff = log_archive.retention_cutoff(datetime.now(UTC), settings.retention.keep_days)
    finished = finish_interrupted(settings)
    moved = tuple(archive_table(settings, source.name, cutoff) for source in log_archive.SOURCES)
    summary = RetentionSummary(
        cutoff=cutoff, finished=finished, moved=moved, stats_deleted=prune_live_stats(settings, cutoff)
    )
    create_markdown_artifact(
        key="log-retention", markdown=_markdown(summary, settings), description="Prediction log retention"
    )
    logger.info(
        "archived %d rows older than %s (%s)",
        summary.archived,
        cutoff.isoformat(),
        ", ".join(f"{m.source}: {m.archived} archived, {m.kept} live" for m in moved),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.retention restore --day YYYY-MM-DD``: a day's archived rows back in the live log."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m flows.retention", description=main.__doc__)
    parser.add_argument("action", choices=("restore",))
    parser.add_argument("--day", type=date.fromisoformat, required=True, help="the archive's date=... folder")
    args = parser.parse_args(argv)
    settings = Settings()
    engine = prediction_log.make_engine(settings.prediction_log_url)
    try:
        parts = log_archive.parts_of_day(engine, args.day)
        for part in parts:
            rows = log_archive.restore(engine, settings.archive_path, part)
            sys.stdout.write(f"restored {rows} rows from {part}\n")
    finally:
        engine.dispose()
    if not parts:
        sys.stdout.write(f"no archived file of {args.day} in {settings.archive_path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
