#!/usr/bin/env bash
# Started by `make run`: migrate, seed the demo once, then run the web server, one Celery worker
# (queues gpu and default, with the periodic reaper) and the inference process (the /v1/ API's engine)
# side by side under scripts/supervise.py (one that exits is started again, the others keep running)
# until Ctrl-C stops them all. The inference process listens on the web port + 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${FTSTUDIO_HOST:-127.0.0.1}
PORT=${FTSTUDIO_PORT:-8000}
# Both ports free, or one sentence saying which is taken.
FTSTUDIO_INFERENCE_PORT=$($PY scripts/supervise.py ports --host "$HOST" --web "$PORT") || exit 1
export FTSTUDIO_INFERENCE_PORT
export FTSTUDIO_INFERENCE_URL=${FTSTUDIO_INFERENCE_URL:-http://127.0.0.1:$FTSTUDIO_INFERENCE_PORT}

$PY manage.py migrate --noinput
$PY manage.py ensure_admin
if $PY manage.py help seed_demo >/dev/null 2>&1; then
  $PY manage.py seed_demo --if-empty
fi

$PY scripts/supervise.py run \
  --child "the worker" ".venv/bin/celery -A ftstudio worker -B -Q gpu,default --pool solo --loglevel INFO \
    --schedule ${FTSTUDIO_VAR_DIR:-var}/celerybeat-schedule" \
  --child "the inference process" "$PY -m worker.serve --host 127.0.0.1 --port $FTSTUDIO_INFERENCE_PORT" \
  --child "the web server" "$PY manage.py runserver --noreload $HOST:$PORT" &
supervisor=$!
trap 'kill -TERM "$supervisor" 2>/dev/null || true; wait "$supervisor" 2>/dev/null || true' INT TERM

if $PY manage.py ping_worker --timeout 60; then
  echo "The worker answered."
else
  echo "The worker did not answer within 60 s: see its log above." >&2
fi
echo
echo "Fine-Tuning Studio is running at http://$HOST:$PORT  (Ctrl-C stops the server, the worker and the inference process)"
echo "OpenAI-compatible API: http://$HOST:$PORT/v1/  (create a key under a project's Settings)"
wait "$supervisor"
