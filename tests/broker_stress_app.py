"""A Django-free Celery app on the embedded broker's transport, for tests/test_broker_stress.py: its one task
appends its number to a file, so the test can tell that every task ran exactly once.

``python -m tests.broker_stress_app produce FIRST COUNT`` sends COUNT tasks numbered from FIRST (one producer)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from celery import Celery

FOLDER = Path(os.environ.get("STRESS_BROKER_DIR", "var/broker-stress"))
PADDING = int(os.environ.get("STRESS_PADDING", "200"))  # bytes of payload per message

app = Celery("broker_stress", broker="filesystem://")
app.conf.update(
    broker_transport=os.environ.get("STRESS_TRANSPORT", "ftstudio.broker:Transport"),
    broker_transport_options={
        "data_folder_in": str(FOLDER / "queue"),
        "data_folder_out": str(FOLDER / "queue"),
        "processed_folder": str(FOLDER / "processed"),
        "control_folder": str(FOLDER / "control"),
        "polling_interval": 0.05,
    },
    task_default_queue="stress",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)


@app.task(name="stress.record")
def record(number: int, padding: str = "") -> None:
    with open(FOLDER / "ran.txt", "a") as ran:  # one short append per task: lines never interleave
        ran.write(f"{number}\n")


if __name__ == "__main__" and sys.argv[1] == "produce":
    first, count = int(sys.argv[2]), int(sys.argv[3])
    for number in range(first, first + count):
        record.delay(number, "x" * PADDING)
