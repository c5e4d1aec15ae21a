import pytest

from tests.worker_process import running_worker, wait_for_ping

pytestmark = pytest.mark.slow  # starts a worker process


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_answers_a_ping_through_the_broker(tmp_path):
    with running_worker(tmp_path, queues="default") as worker:
        assert wait_for_ping(worker) == "pong"
        assert "ready" in worker.log()
