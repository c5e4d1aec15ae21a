"""Examples and frozen dataset versions.

An Example is a conversation: an optional system message, then user/assistant turns; its final
assistant turn is the ideal output. ``messages`` is a list of ``{"role": ..., "content": ...}``.
A DatasetVersion is an immutable snapshot: its items copy the messages and split at freeze time,
so runs and evaluations never see later edits.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import Project
from ftstudio.models import StateMachine, TimeStamped


class ExampleStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VAL = "val", "Validation"
    TEST = "test", "Test"


class ImportBatch(TimeStamped):
    """One import of a file: where examples came from, with what the importer reported."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="imports")
    filename = models.CharField(max_length=255)
    file_format = models.CharField(max_length=16)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    imported_count = models.PositiveIntegerField(default=0)
    skipped_duplicates = models.PositiveIntegerField(default=0)
    warnings = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"{self.filename} ({self.imported_count} examples)"


class Example(TimeStamped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="examples")
    messages = models.JSONField(help_text="[{role, content}, ...]; the last assistant turn is the ideal output")
    tools = models.JSONField(default=list, blank=True, help_text="OpenAI function definitions offered to the model")
    status = models.CharField(max_length=16, choices=ExampleStatus.choices, default=ExampleStatus.DRAFT)
    split = models.CharField(max_length=8, choices=Split.choices, blank=True, default="")
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    source = models.ForeignKey(ImportBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="examples")
    origin = models.CharField(
        max_length=200, blank=True, default="", help_text="where a draft came from when not a file (a served answer)"
    )
    content_hash = models.CharField(
        max_length=64, help_text="sha256 of the messages as imported (de-duplicates re-imports)"
    )
    input_hash = models.CharField(max_length=64, blank=True, help_text="sha256 of the normalized input turns")
    revision = models.PositiveIntegerField(
        default=1, help_text="optimistic-locking counter, +1 on every save by a person"
    )
    token_count = models.PositiveIntegerField(
        default=0, help_text="tokens of the whole conversation (base model's tokenizer)"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "status", "id"]),
            models.Index(fields=["project", "split", "id"]),
            models.Index(fields=["project", "content_hash"]),
            models.Index(fields=["project", "input_hash"]),
            # the labelling list's status and split counts, as an index-only scan
            models.Index(fields=["project", "status", "split"], name="datasets_example_counts_idx"),
        ]

    def __str__(self) -> str:
        return f"Example #{self.pk}"

    @property
    def ideal_output(self) -> str:
        for message in reversed(self.messages or []):
            if message.get("role") == "assistant":
                return message.get("content", "")
        return ""

    @property
    def ideal_tool_calls(self) -> list[dict]:
        """The tool calls of the final assistant turn (OpenAI's ``tool_calls``), if it makes any."""
        for message in reversed(self.messages or []):
            if message.get("role") == "assistant":
                return message.get("tool_calls") or []
        return []

    @property
    def input_messages(self) -> list[dict]:
        """Every turn before the final assistant turn (what the model is given)."""
        msgs = list(self.messages or [])
        for i in range(len(msgs) - 1, -1, -1):
            if msgs[i].get("role") == "assistant":
                return msgs[:i]
        return msgs


class ExampleRevision(models.Model):
    """History: the example as it was before each change, who changed it and when."""

    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="revisions")
    revision = models.PositiveIntegerField()
    messages = models.JSONField()
    status = models.CharField(max_length=16, choices=ExampleStatus.choices)
    split = models.CharField(max_length=8, choices=Split.choices, blank=True, default="")
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    change = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-revision"]
        constraints = [models.UniqueConstraint(fields=["example", "revision"], name="one_history_row_per_revision")]


class DatasetVersion(models.Model):
    """An immutable, numbered snapshot of a project's approved examples."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="dataset_versions")
    number = models.PositiveIntegerField()
    content_hash = models.CharField(max_length=64)
    note = models.CharField(max_length=200, blank=True)
    split_counts = models.JSONField(default=dict, help_text='{"train": n, "val": n, "test": n}')
    token_stats = models.JSONField(
        default=dict, blank=True, help_text="per split: count, total, mean, p50, p95, max tokens"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    derived_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="derived_versions",
        help_text="set on a subset frozen from another version (a data-scaling experiment's arm): not new data",
    )

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="version_numbers_unique_per_project")]

    def __str__(self) -> str:
        return f"v{self.number}"

    @property
    def example_count(self) -> int:
        return sum(self.split_counts.values()) if self.split_counts else 0

    def conversations(self, split: str) -> list[list[dict]]:
        """The frozen conversations of one split, in a stable order (what training and evaluation read)."""
        return [item.messages for item in self.items.filter(split=split).order_by("position")]

    def training_conversations(self, split: str) -> list:
        """What training reads: each conversation's messages, or ``{"messages", "tools"}`` where it offers tools
        (worker.data renders both)."""
        items = self.items.filter(split=split).order_by("position").values_list("messages", "tools")
        return [{"messages": messages, "tools": tools} if tools else messages for messages, tools in items]


class DatasetVersionItem(models.Model):
    """One frozen example inside a version. Later edits to the Example never change it."""

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="items")
    example = models.ForeignKey(Example, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    position = models.PositiveIntegerField()
    split = models.CharField(max_length=8, choices=Split.choices)
    messages = models.JSONField()
    tools = models.JSONField(default=list, blank=True)
    content_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["version", "position"]
        indexes = [models.Index(fields=["version", "split", "position"])]
        constraints = [models.UniqueConstraint(fields=["version", "position"], name="one_item_per_position")]

    @property
    def ideal_output(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "assistant":
                return message.get("content", "")
        return ""

    @property
    def input_messages(self) -> list[dict]:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].get("role") == "assistant":
                return self.messages[:i]
        return list(self.messages)


class ReportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class FindingKind(models.TextChoices):
    EXACT_DUPLICATE = "exact_duplicate", "Exact duplicates"
    NEAR_DUPLICATE = "near_duplicate", "Near-duplicates"
    CONFLICT = "conflict", "Conflicting ideal outputs"
    EMPTY_OUTPUT = "empty_output", "Empty output"
    SHORT_OUTPUT = "short_output", "Very short output"
    TOO_LONG = "too_long", "Over the model's context"
    PERSONAL_DATA = "personal_data", "Personal data"
    LEAKAGE = "leakage", "Leakage between splits"


class QualityReport(StateMachine):
    """One run of the quality checks over a project's examples (a Celery task on the `default` queue)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="quality_reports")
    status = models.CharField(max_length=16, choices=ReportStatus.choices, default=ReportStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    stage = models.CharField(max_length=120, blank=True)
    example_count = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True, help_text="{kind: number of open findings}")
    error = models.TextField(blank=True)
    seconds = models.FloatField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "status", "id"])]

    @property
    def is_active(self) -> bool:
        return self.status in (ReportStatus.QUEUED, ReportStatus.RUNNING)

    # a row's own state changes (StateMachine.write)
    def mark_running(self) -> bool:
        return self.write(status=ReportStatus.RUNNING, progress=1, stage="Loading examples")

    def note_progress(self, percent: int, stage: str) -> bool:
        return self.write(
            QualityReport.objects.filter(pk=self.pk, status=ReportStatus.RUNNING), progress=percent, stage=stage
        )

    def mark_done(self, **results) -> bool:
        return self.write(status=ReportStatus.DONE, progress=100, stage="Done", finished_at=timezone.now(), **results)

    def mark_failed(self, error: str) -> bool:
        """Only an unfinished report fails: a done one keeps its findings."""
        unfinished = QualityReport.objects.filter(pk=self.pk).exclude(status=ReportStatus.DONE)
        return self.write(unfinished, status=ReportStatus.FAILED, error=error, finished_at=timezone.now())


class QualityFinding(models.Model):
    """One problem found by a report, linking to the examples involved.

    ``key`` fingerprints the finding (its kind and the content of its examples), so a dismissal
    survives re-running the report and lapses once the examples change.
    """

    report = models.ForeignKey(QualityReport, on_delete=models.CASCADE, related_name="findings")
    kind = models.CharField(max_length=32, choices=FindingKind.choices)
    severity = models.CharField(max_length=8, default="warn", help_text="bad | warn")
    detail = models.CharField(max_length=500)
    key = models.CharField(max_length=64)
    dismissed = models.BooleanField(default=False)
    examples = models.ManyToManyField(Example, related_name="quality_findings")

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["report", "kind", "dismissed"]), models.Index(fields=["report", "key"])]


class QualityDismissal(models.Model):
    """A designer's decision that a finding is not a problem (kept across report runs)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="quality_dismissals")
    key = models.CharField(max_length=64)
    kind = models.CharField(max_length=32, choices=FindingKind.choices)
    dismissed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "key"], name="one_dismissal_per_finding_key")]


class ImportJob(StateMachine):
    """An upload too large to import inside the request: stored under MEDIA_ROOT, imported by the Celery
    task ``datasets.import_file`` (queue `default`), its progress polled by the import page."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    filename = models.CharField(max_length=255)
    file_format = models.CharField(max_length=16, default="auto")
    upload = models.CharField(max_length=500, help_text="path of the stored upload, relative to MEDIA_ROOT")
    size = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=ReportStatus.choices, default=ReportStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    stage = models.CharField(max_length=120, blank=True)
    errors = models.JSONField(default=list, blank=True, help_text="[[line, message], ...] (the first 1000)")
    error_count = models.PositiveIntegerField(default=0)
    warnings = models.JSONField(default=list, blank=True)
    imported = models.PositiveIntegerField(default=0)
    skipped_duplicates = models.PositiveIntegerField(default=0)
    batch = models.ForeignKey(ImportBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="last sign of life of the importing worker")
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "id"])]

    def __str__(self) -> str:
        return f"import of {self.filename} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (ReportStatus.QUEUED, ReportStatus.RUNNING)

    # a row's own state changes (StateMachine.write): a done job is never changed again (its rows are committed)
    def _rows(self, *statuses):
        rows = ImportJob.objects.filter(pk=self.pk)
        return rows.filter(status__in=statuses) if statuses else rows.exclude(status=ReportStatus.DONE)

    def mark_running(self) -> bool:
        """A worker starts (or starts again) importing: one more attempt and a first sign of life."""
        return self.write(
            self._rows(),
            status=ReportStatus.RUNNING,
            progress=1,
            stage="Starting",
            heartbeat_at=timezone.now(),
            attempts=F("attempts") + 1,
        )

    def note_progress(self, percent: int, stage: str) -> bool:
        return self.write(
            self._rows(ReportStatus.RUNNING), progress=percent, stage=stage[:120], heartbeat_at=timezone.now()
        )

    def note_resent(self, now) -> bool:
        """Its message was sent again: counts as a sign of life, so one re-send per staleness period."""
        return self.write(heartbeat_at=now)

    def mark_done(self, **results) -> bool:
        return self.write(status=ReportStatus.DONE, progress=100, stage="Done", finished_at=timezone.now(), **results)

    def mark_failed(self, stage: str, *, only_running: bool = False) -> bool:
        """The import stopped with ``stage`` saying why; never a done job (nor, ``only_running``, a queued one)."""
        rows = self._rows(ReportStatus.RUNNING) if only_running else self._rows()
        return self.write(rows, status=ReportStatus.FAILED, stage=stage[:120], finished_at=timezone.now())


class PreferenceOrigin(models.TextChoices):
    VERDICT = "verdict", "Reviewers' blind verdict"
    EDIT = "edit", "A designer's edit of a model output"
    IMPORT = "import", "Imported file"


class PreferencePair(TimeStamped):
    """One draft preference: for this input, ``preferred`` is a better reply than ``non_preferred``.

    The pool a team curates; runs never read it directly, only a frozen `PreferenceVersion`. ``messages`` is the
    input conversation (every turn before the reply), ``preferred``/``non_preferred`` are one assistant message
    each (``{"role": "assistant", "content": ..., "tool_calls": ...}``), as OpenAI's preference files hold them.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="preference_pairs")
    messages = models.JSONField(help_text="the input conversation: every turn before the reply")
    tools = models.JSONField(default=list, blank=True)
    preferred = models.JSONField(help_text="the better assistant message")
    non_preferred = models.JSONField(help_text="the worse assistant message")
    origin = models.CharField(max_length=8, choices=PreferenceOrigin.choices)
    origin_detail = models.JSONField(
        default=dict, blank=True, help_text="where it came from: evaluation item and verdicts, edited output, file line"
    )
    input_hash = models.CharField(max_length=64, help_text="sha256 of the normalized input turns (as Example's)")
    content_hash = models.CharField(max_length=64)
    split = models.CharField(max_length=8, choices=Split.choices, blank=True, default="")
    excluded = models.BooleanField(default=False, help_text="left out of the next version by a person")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "excluded", "id"]),
            models.Index(fields=["project", "content_hash"]),
            models.Index(fields=["project", "input_hash"]),
        ]
        constraints = [
            # the pool holds a pair once: re-imports and re-harvests add nothing twice, even when they race
            models.UniqueConstraint(fields=["project", "content_hash"], name="one_preference_pair_per_content")
        ]


class PreferenceVersion(models.Model):
    """An immutable, numbered snapshot of a project's preference pairs (what a preference run trains on).

    Anchored to the examples version whose test split judges the resulting model: no pair's input may be one of
    those test items (checked when frozen, and again when a run is launched).
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="preference_versions")
    number = models.PositiveIntegerField()
    dataset_version = models.ForeignKey(
        DatasetVersion,
        on_delete=models.PROTECT,
        related_name="preference_versions",
        help_text="the examples version whose test items judge models trained on these pairs",
    )
    content_hash = models.CharField(max_length=64)
    note = models.CharField(max_length=200, blank=True)
    split_counts = models.JSONField(default=dict, help_text='{"train": n, "val": n}')
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="preference_version_numbers_unique")]

    def __str__(self) -> str:
        return f"p{self.number}"

    @property
    def pair_count(self) -> int:
        return sum(self.split_counts.values()) if self.split_counts else 0

    def training_pairs(self, split: str) -> list[dict]:
        """What preference training reads: ``{"messages", "tools", "preferred", "non_preferred"}`` per pair."""
        rows = self.items.filter(split=split).order_by("position")
        return [
            {"messages": r.messages, "tools": r.tools, "preferred": r.preferred, "non_preferred": r.non_preferred}
            for r in rows
        ]


class PreferenceVersionItem(models.Model):
    """One frozen pair inside a preference version. Later edits to the pool never change it."""

    version = models.ForeignKey(PreferenceVersion, on_delete=models.CASCADE, related_name="items")
    pair = models.ForeignKey(PreferencePair, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    position = models.PositiveIntegerField()
    split = models.CharField(max_length=8, choices=Split.choices)
    messages = models.JSONField()
    tools = models.JSONField(default=list, blank=True)
    preferred = models.JSONField()
    non_preferred = models.JSONField()
    content_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["version", "position"]
        indexes = [models.Index(fields=["version", "split", "position"])]
        constraints = [models.UniqueConstraint(fields=["version", "position"], name="one_preference_item_per_position")]
