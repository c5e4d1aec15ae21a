"""Memory of three concurrent /v1/files downloads of one 99 MB file (issue 28, item 10).

What ``GET /v1/files/{id}/content`` hands to the WSGI server, before and after: the whole file read into an
``HttpResponse`` (before) or a ``FileResponse`` over the stored file, read in chunks as the server sends it (now).
Each strategy runs in a fresh child process: three responses are opened at once and drained chunk by chunk in
turn, as three slow clients would; the child reports its peak resident memory growth (the kernel's high-water
mark ``VmHWM`` after ``echo 5 > /proc/self/clear_refs``, minus the RSS before).

    python bench/download_memory.py [SIZE_MB]

Prints each strategy's growth, then `ratio=before/now` last (now floored at 1 MB: it is below what VmHWM shows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZE_MB = float(sys.argv[1]) if len(sys.argv) > 1 else 99.0

CHILD = r"""
import json, os, sys
from pathlib import Path
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")
import django
django.setup()
from django.http import FileResponse, HttpResponse

def status_kb(field):
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])

path, strategy = sys.argv[1], sys.argv[2]
Path("/proc/self/clear_refs").write_text("5")
before = status_kb("VmRSS")
if strategy == "before":
    responses = []
    for _ in range(3):
        with open(path, "rb") as stream:
            responses.append(HttpResponse(stream.read(), content_type="application/octet-stream"))
    streams = [iter([r.content]) for r in responses]
else:
    responses = [FileResponse(open(path, "rb"), content_type="application/octet-stream") for _ in range(3)]
    streams = [iter(r) for r in responses]
sent = 0
while streams:
    for s in list(streams):
        chunk = next(s, None)
        if chunk is None:
            streams.remove(s)
        else:
            sent += len(chunk)
for r in responses:
    r.close()
print(json.dumps({"growth_mb": (status_kb("VmHWM") - before) / 1024, "sent_mb": sent / 2**20}))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file.jsonl"
        line = b'{"messages": [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Soon."}]}\n'
        with open(path, "wb") as out:
            for _ in range(int(SIZE_MB * 2**20 / len(line))):
                out.write(line)
        growth = {}
        for strategy in ("before", "now"):
            result = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), strategy],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            growth[strategy] = figures["growth_mb"]
            print(f"{strategy}: peak growth {figures['growth_mb']:.1f} MB for {figures['sent_mb']:.0f} MB sent")
    print(f"ratio={growth['before'] / max(growth['now'], 1.0):.0f}")  # "now" is floored at 1 MB


if __name__ == "__main__":
    main()
