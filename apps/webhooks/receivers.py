"""What the project's webhooks announce, connected to the lower apps' signals in WebhooksConfig.ready."""

from . import services


def on_run_ended(sender, run_pk: int, **kwargs) -> None:
    services.announce_run(run_pk)


def on_evaluation_ready(sender, evaluation_pk: int, **kwargs) -> None:
    services.announce_evaluation_ready(evaluation_pk)


def on_evaluation_reviewed(sender, evaluation_pk: int, reviewer_pk: int, **kwargs) -> None:
    services.announce_evaluation_reviewed(evaluation_pk, reviewer_pk)
