"""Celery tasks of curation. They take primary keys, reload, check state and are safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task

from .models import ImportJob, QualityReport, ReportStatus

log = logging.getLogger(__name__)


@shared_task(name="datasets.quality_report", queue="default")
def quality_report_task(report_id: int) -> str:
    from . import services

    report = QualityReport.objects.select_related("project").filter(pk=report_id).first()
    if report is None:
        return "missing"
    if report.status == ReportStatus.DONE:
        return "already done"
    try:
        services.run_quality_report(project=report.project, report=report)
    except Exception as exc:
        log.exception("Quality report %s of project %s failed", report_id, report.project.slug)
        report.mark_failed(f"{type(exc).__name__}: {exc}")
        raise
    return "done"


@shared_task(name="datasets.import_file", queue="default")
def import_file_task(job_id: int) -> str:
    """Import a large upload in the background (its page polls the job's progress)."""
    from . import importing

    job = ImportJob.objects.select_related("project", "created_by").filter(pk=job_id).first()
    if job is None:
        return "missing"
    if job.status == ReportStatus.DONE:
        return "already done"
    try:
        job = importing.run_import_job(job=job)
    except Exception as exc:
        log.exception("Import job %s of project %s failed", job_id, job.project.slug)
        ImportJob(pk=job_id).mark_failed(f"{type(exc).__name__}: {exc}")
        raise
    return f"imported {job.imported}" if not job.error_count else f"refused: {job.error_count} problems"
