"""Memory of three concurrent /v1/files downloads of one 99 MB file.

What ``GET /v1/files/{id}/content`` hands to the WSGI server, before and after: the whole file read into an
``HttpResponse`` (before) or a ``FileResponse`` over the stored file, read in chunks as the server sends it (now).
Each strategy runs in a fresh child process: three responses are opened at once and drained chunk by chunk in
turn, as three slow clients would; the child reports its peak resident memory growth (the kernel's high-water
mark ``VmHWM`` after ``echo 5 > /proc/self/clear_refs``, minus the RSS before).

    python bench/download_memory.py [--size-mb 99] [--rounds 3]

The sides alternate for `--rounds` rounds, a fresh child process each; every round prints both growths, and the
last line is `ratio=before/now` (median, min-max; now floored at 1 MB: it is below what VmHWM shows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from _rounds import add_rounds_argument, alternate  # noqa: E402

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


def measure(path: Path, strategy: str) -> dict:
    """One fresh child process serving ``path`` three times at once with ``strategy``: its peak RSS growth."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), strategy],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=99.0, help="the file's size")
    add_rounds_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file.jsonl"
        line = b'{"messages": [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Soon."}]}\n'
        with open(path, "wb") as out:
            for _ in range(int(args.size_mb * 2**20 / len(line))):
                out.write(line)
        alternate(
            args.rounds,
            lambda n: measure(path, "before"),
            lambda n: measure(path, "now"),
            ratio=lambda before, now: before["growth_mb"] / max(now["growth_mb"], 1.0),  # "now" floored at 1 MB
            describe=lambda before, now: (
                f"before {before['growth_mb']:.1f} MB, now {now['growth_mb']:.1f} MB for {now['sent_mb']:.0f} MB sent"
            ),
            digits=0,
        )


if __name__ == "__main__":
    main()
