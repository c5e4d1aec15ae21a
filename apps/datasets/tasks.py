"""Celery tasks of curation. They take primary keys, reload, check state and are safe to run twice."""

from __future__ import annotations

import logging

from celery import shared_task

from .models import QualityReport, ReportStatus

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
        QualityReport.objects.filter(pk=report_id).update(status=ReportStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    return "done"
