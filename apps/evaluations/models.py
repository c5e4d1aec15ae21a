"""Rubrics, evaluations, their candidates and generations, blind comparisons and judgments.

* A Rubric is versioned: editing one creates a new row (same ``name``, ``version`` + 1); evaluations
  point at the exact version they were reviewed against.
* An Evaluation generates every Candidate's output (a Generation) for every held-out item of a frozen
  DatasetVersion, then pairs candidates per item (a Comparison).
* A reviewer works on an Assignment: one comparison, with the sides randomized for that reviewer and an
  opaque token in the URL; the review page never names the candidates. Their Judgment stores the winner
  and per-criterion Scores against the candidates themselves (not against the shown sides).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Project
from apps.datasets.models import DatasetVersion, DatasetVersionItem, Example
from apps.runs.leases import LeaseHolder
from apps.runs.models import BaseModel, Run
from ftstudio.models import TimeStamped


class Scale(models.TextChoices):
    PASS_FAIL = "pass_fail", "Pass / fail"
    LIKERT5 = "likert5", "1-5"


SCALE_VALUES = {Scale.PASS_FAIL: (0, 1), Scale.LIKERT5: (1, 2, 3, 4, 5)}


class ReviewMode(models.TextChoices):
    """How much a reviewer is asked per pair: the overall winner only (fastest), or also per-criterion scores
    (each score optional, per criterion and side)."""

    WINNER = "winner", "Overall winner only"
    SCORES = "scores", "Winner and per-criterion scores"


class Rubric(TimeStamped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rubrics")
    name = models.CharField(max_length=120)
    version = models.PositiveIntegerField(default=1)
    description = models.TextField(blank=True)
    review_mode = models.CharField(max_length=8, choices=ReviewMode.choices, default=ReviewMode.SCORES)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["project", "name", "version"], name="rubric_version_unique")]
        indexes = [models.Index(fields=["project", "name", "-version"])]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    def get_absolute_url(self) -> str:
        return reverse("rubric_detail", kwargs={"slug": self.project.slug, "pk": self.pk})


class Criterion(models.Model):
    rubric = models.ForeignKey(Rubric, on_delete=models.CASCADE, related_name="criteria")
    position = models.PositiveSmallIntegerField(default=0)
    name = models.CharField(max_length=80)
    description = models.TextField(blank=True)
    scale = models.CharField(max_length=12, choices=Scale.choices, default=Scale.LIKERT5)
    anchors = models.JSONField(
        default=dict,
        blank=True,
        help_text='what each level means: {"1": "...", ..., "5": "..."} or {"0": fail, "1": pass}',
    )
    good_example = models.ForeignKey(Example, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    bad_example = models.ForeignKey(Example, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["rubric", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["rubric", "name"], name="criterion_name_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def values(self) -> tuple[int, ...]:
        return SCALE_VALUES[self.scale]

    def levels(self) -> list[tuple[int, str, str]]:
        """(value, short label, anchor text) for each level of the scale."""
        if self.scale == Scale.PASS_FAIL:
            return [(1, "Pass", self.anchors.get("1", "")), (0, "Fail", self.anchors.get("0", ""))]
        return [(v, str(v), self.anchors.get(str(v), "")) for v in self.values]


class EvaluationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    GENERATING = "generating", "Generating outputs"
    READY = "ready", "Ready for review"
    FAILED = "failed", "Failed"


class EvaluationPurpose(models.TextChoices):
    """Why outputs are generated and judged: to judge models on the held-out test examples, or to collect the
    reviewers' preferences as training pairs, on training examples (never on test ones: see
    ``apps/evaluations/preferences.py``)."""

    JUDGE = "judge", "Judge models (uses test examples)"
    COLLECT = "collect", "Collect preferences to train on (uses training examples)"


class Evaluation(LeaseHolder, TimeStamped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="evaluations")
    name = models.CharField(max_length=120)
    dataset_version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="evaluations")
    purpose = models.CharField(
        max_length=8,
        choices=EvaluationPurpose.choices,
        default=EvaluationPurpose.JUDGE,
        help_text="judge: the test split (and validation if asked); collect: the train split, for preference pairs",
    )
    include_val = models.BooleanField(default=False, help_text="also evaluate on the validation split")
    rubric = models.ForeignKey(Rubric, on_delete=models.PROTECT, related_name="evaluations")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="evaluations")
    max_new_tokens = models.PositiveIntegerField(default=96)
    seed = models.PositiveIntegerField(default=0)
    reviewers_per_pair = models.PositiveSmallIntegerField(default=2)
    reviewers_see_examples = models.BooleanField(
        default=False,
        help_text="reviewers who have finished may see the labelled outputs example by example, "
        "not only the aggregate results",
    )
    stop_when_settled = models.BooleanField(
        default=True, help_text="stop handing out a candidate pair once it is settled (statistics.settled_early)"
    )
    pair_cap = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="stop handing out a candidate pair once this many of its items are judged "
        "(empty: no cap); a pair also stops once it is settled",
    )

    status = models.CharField(max_length=12, choices=EvaluationStatus.choices, default=EvaluationStatus.QUEUED)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=200, blank=True, help_text="the claim's owner (host:pid:start:token)")
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="when the last task message was sent")
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "-created_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
            models.Index(fields=["status", "enqueued_at"]),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(reviewers_per_pair__gte=1), name="evaluation_reviewers_positive"),
            models.CheckConstraint(
                condition=models.Q(max_new_tokens__gte=1), name="evaluation_max_new_tokens_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(pair_cap__isnull=True) | models.Q(pair_cap__gte=1),
                name="evaluation_pair_cap_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name or f"Evaluation #{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("evaluation_detail", kwargs={"slug": self.project.slug, "pk": self.pk})

    @property
    def splits(self) -> list[str]:
        if self.purpose == EvaluationPurpose.COLLECT:
            return ["train"]
        return ["test", "val"] if self.include_val else ["test"]

    @property
    def collects_preferences(self) -> bool:
        return self.purpose == EvaluationPurpose.COLLECT

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    # --- state transitions (queued -> generating -> ready | failed) --------------------------------------
    # ``rows`` as for ``Run``: the lease's owner-filtered queryset inside the task, so a worker that lost its
    # claim writes nothing; without it, this row. Each returns whether the row was written.
    def mark_generating(self, *, owner: str, now=None) -> bool:
        """Claimed by ``owner``: one more attempt."""
        return self.write(
            status=EvaluationStatus.GENERATING,
            attempts=self.attempts + 1,
            heartbeat_at=now or timezone.now(),
            worker_id=owner,
            error="",
        )

    def mark_ready(self, *, rows=None, done: int) -> bool:
        now = timezone.now()
        return self.write(rows, status=EvaluationStatus.READY, done=done, finished_at=now, heartbeat_at=now)

    def mark_failed(self, error: str, *, rows=None) -> bool:
        return self.write(rows, status=EvaluationStatus.FAILED, error=error)

    def mark_handed_back(self, *, rows) -> bool:
        """A worker shutting down stopped after a batch: queued again, and this attempt is not counted."""
        return self.write(
            rows,
            status=EvaluationStatus.QUEUED,
            worker_id="",
            heartbeat_at=None,
            attempts=F("attempts") - 1,
            enqueued_at=timezone.now(),
        )


class UnblindingReason(models.TextChoices):
    LAUNCHED = "launched", "launched the evaluation"
    REVEALED = "revealed", "chose to see the results"
    FINISHED = "finished", "saw the results after finishing their review"


class Unblinding(models.Model):
    """A member who has seen which candidate wrote which output (results, configuration, judgments) of an
    evaluation. They are never handed its blind pairs from then on: see ``review.next_assignment``."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="unblindings")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=12, choices=UnblindingReason.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["evaluation", "user"], name="unblinding_once_per_user")]


class CandidateKind(models.TextChoices):
    BASE = "base", "Base model"
    PROMPT = "prompt", "Base model + prompt"
    RUN = "run", "Fine-tuned run"


class Candidate(models.Model):
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="candidates")
    position = models.PositiveSmallIntegerField(default=0)
    kind = models.CharField(max_length=8, choices=CandidateKind.choices)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="eval_candidates")
    system_prompt = models.TextField(blank=True)
    few_shot = models.PositiveSmallIntegerField(
        default=0, help_text="examples from the train split shown before each input"
    )
    shot_messages = models.JSONField(
        default=list,
        blank=True,
        help_text="chosen few-shot conversations (a prompt version's); empty: the first `few_shot` of the train split",
    )
    label = models.CharField(max_length=160)

    class Meta:
        ordering = ["evaluation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["evaluation", "label"], name="candidate_label_unique"),
            models.CheckConstraint(
                condition=~models.Q(kind="run") | models.Q(run__isnull=False), name="candidate_run_has_run"
            ),
        ]

    def __str__(self) -> str:
        return self.label


class Generation(models.Model):
    candidate = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="generations")
    item = models.ForeignKey(DatasetVersionItem, on_delete=models.CASCADE, related_name="+")
    output = models.TextField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField(default=0)
    similarity = models.FloatField(default=0, help_text="token F1 against the ideal output, 0-1")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["candidate", "item"], name="generation_unique")]


class Comparison(models.Model):
    """Two candidates' outputs for one item; ``candidate_1`` is the one listed first in the evaluation."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="comparisons")
    item = models.ForeignKey(DatasetVersionItem, on_delete=models.CASCADE, related_name="+")
    candidate_1 = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+")
    candidate_2 = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+")
    order_key = models.PositiveIntegerField(default=0, help_text="a seeded shuffle: the order pairs are handed out")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "item", "candidate_1", "candidate_2"], name="comparison_unique"
            ),
            models.CheckConstraint(
                condition=~models.Q(candidate_1=models.F("candidate_2")), name="comparison_two_candidates"
            ),
        ]
        indexes = [models.Index(fields=["evaluation", "order_key"])]


class Assignment(models.Model):
    """One reviewer's copy of a comparison: its own side order and an opaque token for its URL."""

    token = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="assignments")
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="assignments")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_assignments")
    swapped = models.BooleanField(help_text="side A shows candidate_2")
    created_at = models.DateTimeField(auto_now_add=True)
    shown_at = models.DateTimeField(
        null=True, blank=True, help_text="when the pair's page was first rendered to the reviewer"
    )
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["comparison", "reviewer"], name="assignment_once_per_reviewer")]
        indexes = [models.Index(fields=["evaluation", "reviewer", "completed_at"])]


class Judgment(models.Model):
    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE, related_name="judgment")
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="judgments")
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="judgments")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_judgments")
    winner = models.ForeignKey(
        Candidate, null=True, blank=True, on_delete=models.CASCADE, related_name="+", help_text="empty: a tie"
    )
    comment = models.TextField(blank=True)
    seconds = models.FloatField(
        null=True,
        blank=True,
        help_text="time from the pair's page being shown (or handed out) to the judgment being submitted",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["comparison", "reviewer"], name="judgment_once_per_reviewer")]
        indexes = [models.Index(fields=["evaluation", "created_at"])]


class Score(models.Model):
    judgment = models.ForeignKey(Judgment, on_delete=models.CASCADE, related_name="scores")
    criterion = models.ForeignKey(Criterion, on_delete=models.CASCADE, related_name="scores")
    candidate = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="scores")
    value = models.PositiveSmallIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["judgment", "criterion", "candidate"], name="score_unique"),
            models.CheckConstraint(condition=models.Q(value__lte=5), name="score_at_most_5"),
        ]


class CheckKind(models.TextChoices):
    """Automatic checks a designer adds to a criterion; ``worker/checks.py`` runs them."""

    STARTS_WITH = "starts_with", "starts with"
    ENDS_WITH = "ends_with", "ends with"
    CONTAINS = "contains", "contains"
    NOT_CONTAINS = "not_contains", "does not contain"
    REGEX = "regex", "matches the regular expression"
    MAX_SENTENCES = "max_sentences", "at most N sentences"
    MAX_WORDS = "max_words", "at most N words"
    VALID_JSON = "valid_json", "is valid JSON"
    JSON_SCHEMA = "json_schema", "is JSON matching the schema"
    SIMILARITY = "similarity", "similarity to the ideal at least"


class AutoCheck(models.Model):
    """An automatic check of one criterion, versioned with its rubric (a new rubric version copies them)."""

    criterion = models.ForeignKey(Criterion, on_delete=models.CASCADE, related_name="auto_checks")
    position = models.PositiveSmallIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=CheckKind.choices)
    text = models.TextField(
        blank=True, help_text="text with {field} placeholders, a regular expression or a JSON Schema"
    )
    number = models.FloatField(
        null=True, blank=True, help_text="N sentences or words, or the similarity threshold (0-1)"
    )
    weight = models.FloatField(
        default=1,
        validators=[MinValueValidator(0)],
        help_text="its weight as a grader when a run trains from the rubric's graders (0: not used)",
    )

    class Meta:
        ordering = ["criterion", "position", "id"]

    def __str__(self) -> str:
        return self.label

    @property
    def spec(self):
        from worker.checks import CheckSpec

        return CheckSpec(self.kind, self.text, self.number, self.weight)

    @property
    def label(self) -> str:
        from worker.checks import describe

        return describe(self.spec)


class CheckResult(models.Model):
    """One check's verdict on one output, computed on the worker (``evaluations.run_checks``)."""

    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="check_results")
    check_def = models.ForeignKey(AutoCheck, on_delete=models.CASCADE, related_name="results")
    passed = models.BooleanField()
    detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["generation", "check_def"], name="check_result_unique")]
        indexes = [models.Index(fields=["check_def", "passed"])]


class JudgeSettings(TimeStamped):
    """A project's LLM judge: any OpenAI-compatible endpoint (the key is stored, never shown back), and when its
    win rates may appear on a results page (enough human-judged pairs and agreement with the reviewers)."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="judge_settings")
    base_url = models.URLField(max_length=500, help_text="OpenAI-compatible base URL, e.g. https://host/v1")
    model = models.CharField(max_length=200)
    api_key = models.CharField(max_length=500, blank=True)
    timeout_s = models.FloatField(default=60)
    min_human_pairs = models.PositiveIntegerField(
        default=30, help_text="human-judged pairs needed before judge figures show"
    )
    min_kappa = models.FloatField(
        default=0.6, help_text="Cohen's kappa with the reviewers needed before judge figures show"
    )

    def __str__(self) -> str:
        return f"{self.model} at {self.base_url}"


class JudgeVerdict(models.Model):
    """The LLM judge's verdict on one comparison (both orders). ``judged`` False: no usable verdict yet
    (``error`` says why); it is retried and never counted."""

    comparison = models.OneToOneField(Comparison, on_delete=models.CASCADE, related_name="judge_verdict")
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="judge_verdicts")
    judged = models.BooleanField(default=False)
    winner = models.ForeignKey(
        Candidate,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="empty when judged: a tie (the orders disagreed, or both said tie)",
    )
    position_consistent = models.BooleanField(null=True)
    reasoning = models.TextField(blank=True)
    error = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["evaluation", "judged"])]
