"""News from runs for the apps above them, which connect in their AppConfig.ready: runs never call those apps."""

from django.dispatch import Signal

# A run reached an end state (succeeded, failed, cancelled). Sent once the transaction that wrote it commits.
# Keyword: run_pk.
run_ended = Signal()
