#!/usr/bin/env bash
# Started by `make run`: migrate, seed the demo once, then run the web server, one Celery worker
# (queues gpu and default, with the periodic reaper) and the inference process (the /v1/ API's engine)
# side by side until Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${FTSTUDIO_HOST:-127.0.0.1}
PORT=${FTSTUDIO_PORT:-8000}
export FTSTUDIO_INFERENCE_PORT=${FTSTUDIO_INFERENCE_PORT:-8001}
export FTSTUDIO_INFERENCE_URL=${FTSTUDIO_INFERENCE_URL:-http://127.0.0.1:$FTSTUDIO_INFERENCE_PORT}

$PY manage.py migrate --noinput
$PY manage.py ensure_admin
if $PY manage.py help seed_demo >/dev/null 2>&1; then
  $PY manage.py seed_demo --if-empty
fi

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "Stopping the web server, the worker and the inference process..."
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

.venv/bin/celery -A ftstudio worker -B -Q gpu,default --pool solo --loglevel INFO \
  --schedule "${FTSTUDIO_VAR_DIR:-var}/celerybeat-schedule" &
pids+=($!)
$PY -m worker.serve --host 127.0.0.1 --port "$FTSTUDIO_INFERENCE_PORT" &
pids+=($!)
$PY manage.py runserver --noreload "$HOST:$PORT" &
pids+=($!)

if $PY manage.py ping_worker --timeout 60; then
  echo "The worker answered."
else
  echo "The worker did not answer within 60 s: see its log above." >&2
fi
echo
echo "Fine-Tuning Studio is running at http://$HOST:$PORT  (Ctrl-C stops the server, the worker and the inference process)"
echo "OpenAI-compatible API: http://$HOST:$PORT/v1/  (create a key under a project's Settings)"
wait -n "${pids[@]}"
