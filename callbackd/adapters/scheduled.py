"""Reports and exports written on a cron schedule (``[[reports.schedule]]``).

APScheduler 3 with its default in-memory job store: the schedule lives in the
config file, so nothing is persisted and a restart simply re-reads it. A job
that was due while the daemon was down is not caught up; one held up briefly
(a busy loop, a slow disk) still runs within the grace time.

Each run happens in a worker thread with its own event loop and engine: a
report over millions of calls costs seconds of CPU, and the daemon's loop must
keep reading AMI events meanwhile.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from callbackd.adapters import db
from callbackd.adapters.files import atomic_write
from callbackd.adapters.reports import BINARY_FORMATS, ReportSettings, export, period_report, write_report
from callbackd.domain.metrics import Grouping
from callbackd.domain.periods import named_period, period_label

log = structlog.get_logger("callbackd.reports")

MISFIRE_GRACE = timedelta(hours=1)
_EXT = {"csv": "csv", "json": "json", "table": "txt", "xlsx": "xlsx"}


def target_path(job: Any, start: datetime, end: datetime, settings: ReportSettings) -> Path:
    """``report-2026-03-01.csv``; a longer period is named by its first and last day."""
    ext = _EXT[job.format]
    return Path(job.directory) / f"{job.what}-{period_label(start, end, settings.tz)}.{ext}"


async def write_scheduled(url: str, job: Any, settings: ReportSettings, now: datetime) -> Path:
    """Write one scheduled file for the period *job.period* as seen at *now*; returns its path."""
    start, end = named_period(job.period, now, settings.tz)
    path = target_path(job, start, end, settings)
    binary = job.format in BINARY_FORMATS
    engine = db.make_engine(url, read_only=True)
    try:
        if job.what == "report":
            report = await period_report(
                engine, start, end, by=Grouping(job.by), tz=settings.tz, thresholds=settings.thresholds
            )
            with atomic_write(path, binary=binary) as out:
                write_report(report, out, job.format, settings, settings.csv)
        else:
            with atomic_write(path, binary=binary) as out:
                await export(engine, job.what, start, end, out, settings, settings.csv, fmt=job.format)
    finally:
        await engine.dispose()
    return path


def _write_in_thread(url: str, job: Any, settings: ReportSettings, now: datetime) -> Path:
    return asyncio.run(write_scheduled(url, job, settings, now))


class ReportScheduler:
    """Owns the AsyncIOScheduler; :meth:`start` inside the running loop, :meth:`shutdown` on exit."""

    def __init__(self, cfg: Any) -> None:
        self.url: str = cfg.database.url
        self.settings = ReportSettings.from_config(cfg)
        # In memory only: the config file is the schedule, so there is nothing to persist.
        self.scheduler = AsyncIOScheduler(jobstores={"default": MemoryJobStore()}, timezone=self.settings.tz)
        for i, job in enumerate(cfg.reports.schedule):
            self.scheduler.add_job(
                self.fire,
                CronTrigger.from_crontab(job.cron, timezone=self.settings.tz),
                args=[job],
                id=f"reports.schedule.{i}",
                name=f"{job.what} {job.period} -> {job.directory}",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=int(MISFIRE_GRACE.total_seconds()),
            )

    def start(self) -> None:
        if self.scheduler.get_jobs():
            self.scheduler.start()
            for job in self.scheduler.get_jobs():
                log.info("reports.scheduled", job=job.id, what=job.name, next_run=str(job.next_run_time))

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def fire(self, job: Any, now: datetime | None = None) -> Path | None:
        """Run one job; failures are logged, never raised into the scheduler."""
        now = now or datetime.now(self.settings.tz)
        try:
            path = await asyncio.to_thread(_write_in_thread, self.url, job, self.settings, now)
        except Exception:
            log.exception("reports.failed", what=job.what, period=job.period, directory=str(job.directory))
            return None
        log.info("reports.written", path=str(path), what=job.what, period=job.period)
        return path
