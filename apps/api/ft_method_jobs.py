"""OpenAI's fine-tuning API, dpo and reinforcement jobs: their files checked line by line, imported, frozen and
launched."""

from __future__ import annotations

import io
import json

from django.db import transaction

from apps.datasets import importing as datasets_importing
from apps.datasets import services as datasets
from apps.datasets import versions as datasets_versions
from apps.datasets.importers import content_hash
from apps.datasets.models import Example, PreferencePair
from apps.runs import launching
from apps.runs.models import BaseModel, Run

from .fine_tuning import PRESET, _Invalid, jobs_with_runs
from .ft_files import open_file
from .models import ApiFile, FineTuningJob, JobStage


# --- jobs: dpo and reinforcement ----------------------------------------------------------------------------
def _method_file_problems(job: FineTuningJob, record: ApiFile) -> tuple[int, list[str]]:
    from . import method_files

    kind = job.method["type"]
    if kind == "dpo":
        check = method_files.preference_line_errors
    else:
        needed = method_files.item_fields(job.method["reinforcement"]["grader"])

        def check(row):
            return method_files.reinforcement_line_errors(row, needed)

    with open_file(record) as stream:
        return method_files.check_lines(stream, check)


def validate_and_launch_method(job_pk: int) -> FineTuningJob | None:
    """validating_files for a dpo or reinforcement job: every line of its files checked (a problem fails the job,
    naming the line and field, and nothing is imported), then the run launched (:func:`launch_method_job`), all in
    one transaction. A job already validated is left as it is."""
    from . import method_files

    try:
        with transaction.atomic():
            job = FineTuningJob.objects.select_for_update().filter(pk=job_pk, stage=JobStage.VALIDATING).first()
            if job is None:
                return FineTuningJob.objects.filter(pk=job_pk).first()
            files, report = {}, {}
            for param in ("training_file", "validation_file"):
                file_id = getattr(job, param)
                if not file_id:
                    continue
                files[param] = ApiFile.objects.filter(project=job.project, public_id=file_id).first()
                if files[param] is None:
                    raise _Invalid(
                        {
                            "code": "file_not_found",
                            "param": param,
                            "message": f"{param} {file_id} was deleted before it was validated.",
                        }
                    )
                count, problems = _method_file_problems(job, files[param])
                if problems:
                    raise _Invalid(
                        {
                            "code": "invalid_" + param,
                            "param": param,
                            "message": f"{param} {file_id}: {method_files.summary(problems)}. Fix the file, upload it "
                            "again and create a new job; nothing was imported.",
                        }
                    )
                report[param] = {"examples": count, "already_in_project": 0}
            run = launch_method_job(job, files)
            job.mark_launched(run=run, files_report=report)
    except _Invalid as exc:
        FineTuningJob(pk=job_pk).mark_failed(exc.error)
    return jobs_with_runs().get(pk=job_pk)


def _examples_from(job, lines: list[str], label: str, param: str, user) -> list[int]:
    """Import example lines built from a job's file (OpenAI's chat format) and return their ids, in file order."""
    report = datasets_importing.import_examples(
        project=job.project,
        path_or_file=io.BytesIO("".join(line + "\n" for line in lines).encode()),
        file_format="openai",
        user=user,
        filename=label,
    )
    if not report.ok:
        raise _Invalid(
            {
                "code": "invalid_" + param,
                "param": param,
                "message": f"{param}: {report.errors[0]}. Fix the file, upload it again and create a new job; "
                "nothing was imported.",
            }
        )
    hashes = []
    for line in lines:
        row = json.loads(line)
        hashes.append(content_hash(row["messages"], row.get("tools") or []))
    ids = dict(
        Example.objects.filter(project=job.project, content_hash__in=set(hashes)).values_list("content_hash", "id")
    )
    return [ids[h] for h in hashes if h in ids]


def _file_rows(record: ApiFile) -> list[dict]:
    with open_file(record) as stream:
        return [json.loads(raw) for raw in stream if raw.strip()]


def _freeze_examples(job, splits: dict, user, note: str):
    try:
        return datasets_versions.freeze_selection(
            project=job.project, splits=splits, user=user, note=note, keep_val_overlap=True
        )
    except datasets.FreezeError as exc:
        raise _Invalid({"code": "invalid_training_file", "param": "training_file", "message": str(exc)}) from None


def _preference_version(job, files: dict[str, ApiFile], user):
    """A dpo job's pairs imported into the pool and frozen as exactly the file's pairs (train, and val from the
    validation file), anchored to the project's newest examples version (its test items judge the tuned model,
    and no pair may have one of their inputs); a project with no examples version gets one of the preferred
    replies, all for training."""
    from apps.datasets import preference_files, preferences
    from apps.datasets.selectors import frozen_versions

    selection, rows_of = {}, {}
    for param, split in (("training_file", "train"), ("validation_file", "val")):
        record = files.get(param)
        if record is None:
            continue
        with open_file(record) as stream:
            report = preferences.import_preference_pairs(
                project=job.project,
                path_or_file=stream,
                user=user,
                filename=f"{record.public_id} ({record.filename})",
            )
        if not report.ok:
            raise _Invalid(
                {
                    "code": "invalid_" + param,
                    "param": param,
                    "message": f"{param} {record.public_id}: {report.errors[0]}. Fix the file, upload it again and "
                    "create a new job; nothing was imported.",
                }
            )
        with open_file(record) as stream:
            parsed = preference_files.PairsParsed()
            rows_of[param] = list(preference_files.parse_pairs(stream, parsed))
        hashes = [preference_files.pair_hash(r.messages, r.tools, r.preferred, r.non_preferred) for r in rows_of[param]]
        ids = dict(
            PreferencePair.objects.filter(project=job.project, content_hash__in=set(hashes)).values_list(
                "content_hash", "id"
            )
        )
        selection[split] = [ids[h] for h in hashes if h in ids]
    anchor = frozen_versions(job.project).first()
    if anchor is None:
        lines = [
            json.dumps({"messages": [*r.messages, r.preferred], **({"tools": r.tools} if r.tools else {})})
            for r in rows_of["training_file"]
        ]
        train_ids = _examples_from(job, lines, f"preferred replies of {job.public_id}", "training_file", user)
        anchor = _freeze_examples(job, {"train": train_ids}, user, f"fine-tuning job {job.public_id}")
    try:
        return preferences.freeze_preference_version(
            project=job.project,
            dataset_version=anchor,
            user=user,
            note=f"fine-tuning job {job.public_id}",
            selection=selection,
        )
    except preferences.FreezeError as exc:
        raise _Invalid({"code": "invalid_training_file", "param": "training_file", "message": str(exc)}) from None


def _prompt_version(job, files: dict[str, ApiFile], user):
    """A reinforcement job's prompts kept as examples whose ideal output is the line's reference answer (what
    similarity graders and ``{{item.reference_answer}}`` read), frozen as a version (train, and val from the
    validation file)."""
    grader = job.method["reinforcement"]["grader"]
    from . import method_files

    others = sorted(method_files.item_fields(grader) - {"reference_answer"})
    if others:
        raise _Invalid(
            {
                "code": "invalid_request",
                "param": "method.reinforcement.grader",
                "message": f"The grader reads item field(s) {', '.join(others)}: the Studio keeps each prompt's "
                "reference_answer only. Put what the grader needs into reference_answer.",
            }
        )
    splits = {}
    for param, split in (("training_file", "train"), ("validation_file", "val")):
        record = files.get(param)
        if record is None:
            continue
        lines = []
        for number, row in enumerate(_file_rows(record), start=1):
            reference = row.get("reference_answer")
            if reference is None or reference == "":
                raise _Invalid(
                    {
                        "code": "invalid_" + param,
                        "param": param,
                        "message": f"{param} {record.public_id}: line {number}: no reference_answer; the Studio keeps "
                        "each prompt with its reference answer as an example. Nothing was imported.",
                    }
                )
            ideal = reference if isinstance(reference, str) else json.dumps(reference)
            turns = [*row["messages"], {"role": "assistant", "content": ideal}]
            lines.append(json.dumps({"messages": turns, **({"tools": row["tools"]} if row.get("tools") else {})}))
        splits[split] = _examples_from(job, lines, f"{record.public_id} ({record.filename})", param, user)
    return _freeze_examples(job, splits, user, f"fine-tuning job {job.public_id}")


def launch_method_job(job: FineTuningJob, files: dict[str, ApiFile]) -> Run:
    """Where a checked dpo or reinforcement job becomes a Run (inside the job's transaction): its files imported
    and frozen (a preference version, or a version of prompts with their reference answers), then launched by the
    runs service like a run from the browser. A refusal raises ``_Invalid`` (the job fails with its message)."""
    user, kind = job.created_by, job.method["type"]
    base = BaseModel.objects.filter(name=job.model).first()
    if base is None:
        raise _Invalid(
            {
                "code": "model_not_found",
                "param": "model",
                "message": f"The base model {job.model!r} was removed before the job started.",
            }
        )
    if kind == "dpo":
        preference_version = _preference_version(job, files, user)
        launch = {"dataset_version": preference_version.dataset_version, "preference_version": preference_version}
    else:
        grader = {**job.method["reinforcement"]["grader"]}
        grader.setdefault("name", grader.get("type", "grader"))
        launch = {"dataset_version": _prompt_version(job, files, user), "graders": [grader]}
    try:
        return launching.launch_run(
            project=job.project,
            base_model=base,
            preset=PRESET,
            overrides=job.overrides,
            user=user,
            name=job.suffix,
            method=kind,
            **launch,
        )
    except launching.LaunchError as exc:
        raise _Invalid({"code": "invalid_request", "param": None, "message": str(exc)}) from None
