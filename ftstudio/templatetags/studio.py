"""Template filters every page uses: `{% load studio %}`.

* ``status_badge``: the badge colour of any state the Studio shows (runs, evaluations, examples, exports,
  reports, quality findings): ``<span class="badge {{ run.status|status_badge }}">``.
* ``duration``: seconds in people's words: "12 s", "3 min 20 s", "1 h 5 min".
* ``hide_paths``: a log or error without the server's folders ("…/adapter").
"""

from __future__ import annotations

import re

from django import template

register = template.Library()

# One mapping for every state: finished well -> "ok", finished badly -> "bad", in progress -> "warn";
# a state that is neither (a draft example) gets the plain badge.
BADGE_CLASSES: dict[str, str] = {
    "succeeded": "ok",
    "ready": "ok",
    "finished": "ok",
    "approved": "ok",
    "done": "ok",
    "scored": "ok",
    "failed": "bad",
    "cancelled": "bad",
    "rejected": "bad",
    "bad": "bad",
    "queued": "warn",
    "running": "warn",
    "generating": "warn",
    "warn": "warn",
    "draft": "",
}


@register.filter
def status_badge(status) -> str:
    """The badge class for a state value (``run.status``, ``evaluation.status``, ``finding.severity`` ...)."""
    return BADGE_CLASSES.get(str(status or ""), "warn")


@register.filter
def duration(seconds) -> str:
    """Seconds as "12 s", "3 min 20 s", "1 h 5 min" (hours drop the seconds); "" for no value."""
    if seconds is None or seconds == "":
        return ""
    try:
        total = max(0, round(float(seconds)))
    except (TypeError, ValueError):
        return ""
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


# An absolute server path (two parts or more; not the path of a URL, which follows "host" or ":").
_SERVER_PATH = re.compile(r"""(?<![\w:/.~-])/(?:[^\s/'"(),:;]+/)+([^\s/'"(),:;]+)""")


@register.filter
def hide_paths(text) -> str:
    """Text from a worker (a log, an error) without this server's folders: "/srv/media/runs/3/adapter" reads
    "…/adapter". Pages never show where the Studio keeps files."""
    return _SERVER_PATH.sub(lambda m: f"…/{m.group(1)}", str(text or ""))


@register.filter
def parameters(count) -> str:
    """A model's size as people say it: "135M parameters", "1.5B parameters"."""
    try:
        n = int(count)
    except (TypeError, ValueError):
        return ""
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= size:
            return f"{n / size:.3g}{suffix} parameters"
    return f"{n} parameters"
