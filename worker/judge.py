"""An LLM judge of one blind pair, through any OpenAI-compatible chat endpoint (plain Python, no Django).

The judge sees the rubric (criteria, what each level means, good and bad examples), the input and two
answers, and must reply with JSON ``{"reasoning": "...", "winner": "A" | "B" | "tie"}``. Every pair is
judged in both orders (first candidate as A, then as B): it counts as a win only when both orders pick
the same candidate, otherwise it is a tie (a judge that always prefers A gives only ties). A timeout, an
error, or a reply without a verdict leaves the pair **unjudged** with the reason, never a tie or a win;
the caller retries it later. The reason is our summary (a status, a timeout); what the endpoint said is logged only.
The endpoint is called through the one SSRF check (``worker.outbound``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from worker.outbound import OutboundRefused

log = logging.getLogger(__name__)

SYSTEM = (
    "You are a strict, impartial reviewer. You compare two answers to the same input against a rubric. "
    "The order of the answers says nothing about their quality. Reply with JSON only: "
    '{"reasoning": "<two or three sentences>", "winner": "A" or "B" or "tie"}.'
)


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str  # e.g. http://host:8000/v1
    model: str
    api_key: str = "none"
    timeout_s: float = 60.0
    max_tokens: int = 400
    allow_private: bool = False  # a judge on a private or loopback address (tests, an all-internal deployment)


@dataclass(frozen=True)
class JudgeVerdict:
    """``winner``: "first", "second", "tie", or None when the pair is unjudged (``error`` says why)."""

    winner: str | None
    reasoning: str = ""
    error: str = ""
    picks: tuple[str | None, str | None] = (None, None)  # each order's pick, in candidates' terms

    @property
    def position_consistent(self) -> bool | None:
        """Both orders picked the same candidate (or both a tie); None when unjudged."""
        return None if self.winner is None else self.picks[0] == self.picks[1]


class JudgeError(RuntimeError):
    """The judge gave no usable verdict (timeout, HTTP error, refusal, garbage)."""


def rubric_text(criteria: list[dict], description: str = "") -> str:
    """The rubric as the judge reads it: ``criteria`` items have name, description, levels [(label, text)],
    and optional good / bad example texts."""
    parts = [description.strip()] if description.strip() else []
    for c in criteria:
        lines = [f"Criterion: {c['name']}" + (f" - {c['description']}" if c.get("description") else "")]
        lines += [f"  {label}: {text}" for label, text in c.get("levels", []) if text]
        if c.get("good"):
            lines.append(f"  A good answer: {c['good']}")
        if c.get("bad"):
            lines.append(f"  A bad answer: {c['bad']}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def prompt(rubric: str, input_text: str, answer_a: str, answer_b: str) -> list[dict]:
    user = (
        f"Rubric:\n{rubric}\n\nInput:\n{input_text}\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}\n\n"
        "Which answer is better overall under the rubric? Reply with the JSON object only."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_WINNER = re.compile(r'"?winner"?\s*[:=]\s*"?(A|B|tie)\b', re.IGNORECASE)


def parse_pick(text: str) -> tuple[str, str]:
    """("A" | "B" | "tie", reasoning) from the judge's reply; JudgeError when there is no verdict."""
    cleaned = text.strip()
    fenced = re.search(r"\{.*\}", cleaned, re.S)
    if fenced:
        try:
            data = json.loads(fenced.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and str(data.get("winner", "")).strip().lower() in ("a", "b", "tie"):
            pick = str(data["winner"]).strip()
            return ("tie" if pick.lower() == "tie" else pick.upper()), str(data.get("reasoning", ""))[:2000]
    match = _WINNER.search(cleaned)
    if match:
        pick = match.group(1)
        return ("tie" if pick.lower() == "tie" else pick.upper()), cleaned[:2000]
    log.info("no verdict in the judge's reply: %.500r", cleaned)
    raise JudgeError("no verdict in the judge's reply")


def _ask(client, config: JudgeConfig, messages: list[dict]) -> str:
    import openai

    try:
        response = client.chat.completions.create(
            model=config.model, messages=messages, temperature=0, max_tokens=config.max_tokens
        )
    except openai.APITimeoutError as exc:
        raise JudgeError(f"the judge timed out after {config.timeout_s:g} s") from exc
    except openai.APIStatusError as exc:  # the endpoint's own words are logged, not stored for the results page
        log.info("the judge answered HTTP %s: %.500s", exc.status_code, exc.message)
        raise JudgeError(f"the judge answered HTTP {exc.status_code}") from exc
    except openai.APIError as exc:
        log.info("the judge could not be reached: %s", exc)
        cause = exc.__cause__
        refused = isinstance(cause, OutboundRefused) or isinstance(cause and cause.__cause__, OutboundRefused)
        raise JudgeError(
            "the judge's address is private, loopback or reserved" if refused else "the judge could not be reached"
        ) from exc
    if not response.choices or not response.choices[0].message.content:
        raise JudgeError("the judge's reply was empty")
    return response.choices[0].message.content


def client_for(config: JudgeConfig):
    import httpx
    import openai

    from worker.outbound import PublicOnlyTransport

    return openai.OpenAI(
        base_url=config.base_url,
        api_key=config.api_key or "none",
        timeout=config.timeout_s,
        max_retries=0,
        # the one SSRF check: public addresses only, connected to as resolved; no redirects
        http_client=httpx.Client(transport=PublicOnlyTransport(allow_private=config.allow_private)),
    )


def judge_pair(
    config: JudgeConfig, *, rubric: str, input_text: str, first: str, second: str, client=None
) -> JudgeVerdict:
    """Judge ``first`` against ``second`` in both orders; a win only when both orders agree."""
    client = client or client_for(config)
    picks: list[str | None] = []
    reasons = []
    try:
        for order, (a, b) in enumerate(((first, second), (second, first))):
            pick, reasoning = parse_pick(_ask(client, config, prompt(rubric, input_text, a, b)))
            mapped = "tie" if pick == "tie" else ("first" if (pick == "A") == (order == 0) else "second")
            picks.append(mapped)
            reasons.append(f"[{'first' if order == 0 else 'second'} candidate shown as A] {reasoning}".strip())
    except JudgeError as exc:
        return JudgeVerdict(None, "\n".join(reasons), str(exc), (picks + [None, None])[:2])
    winner = picks[0] if picks[0] == picks[1] else "tie"
    return JudgeVerdict(winner, "\n".join(reasons), "", (picks[0], picks[1]))
