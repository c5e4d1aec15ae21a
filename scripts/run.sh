#!/usr/bin/env bash
# Started by `make run`: migrate, seed the demo once, then run the web server and one Celery worker
# (queues gpu and default, with the periodic reaper) side by side until Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${FTSTUDIO_HOST:-127.0.0.1}
PORT=${FTSTUDIO_PORT:-8000}

$PY manage.py migrate --noinput
$PY manage.py ensure_admin
if $PY manage.py help seed_demo >/dev/null 2>&1; then
  $PY manage.py seed_demo --if-empty
fi

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "Stopping the web server and the worker..."
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

.venv/bin/celery -A ftstudio worker -B -Q gpu,default --concurrency 1 --loglevel INFO \
  --schedule "${FTSTUDIO_VAR_DIR:-var}/celerybeat-schedule" &
pids+=($!)
$PY manage.py runserver --noreload "$HOST:$PORT" &
pids+=($!)

if $PY manage.py ping_worker --timeout 60; then
  echo "The worker answered."
else
  echo "The worker did not answer within 60 s: see its log above." >&2
fi
echo
echo "Fine-Tuning Studio is running at http://$HOST:$PORT  (Ctrl-C stops the server and the worker)"
wait -n "${pids[@]}"
