"""Shared set-up of the curation benchmarks: a throw-away Django environment and generated examples."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

NAMES = [
    "Ana",
    "Sam",
    "Lee",
    "Kim",
    "Noor",
    "Raj",
    "Eva",
    "Tom",
    "Ola",
    "Max",
    "Ivy",
    "Ben",
    "Zoe",
    "Ali",
    "Mia",
    "Leo",
]
PRODUCTS = [
    "kettle",
    "toaster",
    "desk lamp",
    "office chair",
    "standing desk",
    "phone case",
    "backpack",
    "umbrella",
    "blender",
    "mirror",
    "rice cooker",
    "monitor arm",
    "keyboard",
    "yoga mat",
    "water bottle",
    "headphones",
]
PROBLEMS = [
    "arrived broken",
    "is missing a part",
    "stopped working after a week",
    "was the wrong colour",
    "never arrived",
    "was charged twice",
    "makes a loud noise",
    "arrived late",
    "does not fit",
    "leaks",
]
ASKS = [
    "Can you send a replacement?",
    "I would like a refund.",
    "What should I do now?",
    "Please help me quickly.",
    "Is there a repair option?",
    "Can I exchange it?",
    "When will it be fixed?",
    "Who can I talk to?",
]
FIXES = [
    "a replacement ships today",
    "your refund of {amount} is on its way",
    "a courier collects it on {day}",
    "we added a {amount} credit to your account",
    "the missing part ships on {day}",
    "a technician calls you on {day}",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
SYSTEM = "You answer customer messages in the house style: greet by name, one sentence from the facts, sign off."


def setup_django(tmp: str | None = None) -> str:
    """Configure Django on a temporary var dir (SQLite there unless DATABASE_URL is set) and migrate."""
    tmp = tmp or tempfile.mkdtemp(prefix="ftstudio-bench-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ["FTSTUDIO_VAR_DIR"] = tmp
    os.environ.setdefault("FTSTUDIO_MODEL_CACHE", str(REPO / "var" / "models"))  # the shipped tokenizer's cache
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return tmp


def conversation(rng: random.Random, i: int) -> list[dict]:
    name, product, problem = rng.choice(NAMES), rng.choice(PRODUCTS), rng.choice(PROBLEMS)
    order = 100000 + i
    amount = f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}"
    fix = rng.choice(FIXES).format(amount=amount, day=rng.choice(DAYS))
    user = (
        f"Hello, this is {name}. My {product} from order #{order} {problem}. I bought it {rng.randint(2, 60)} days ago "
        f"for {amount}. {rng.choice(ASKS)}"
    )
    assistant = (
        f"Hi {name}, sorry that your {product} {problem}: {fix} for order #{order}. Best wishes, the Support team"
    )
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]


def write_openai_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": conversation(rng, i)}) + "\n")
    return path


def bench_project(slug: str):
    from apps.accounts.models import Project

    Project.objects.filter(slug=slug).delete()
    return Project.objects.create(name=f"Benchmark {slug}", slug=slug)


def write_flawed_jsonl(path: Path, n: int, seed: int = 0, clean_seed: int = 0) -> Path:
    """``n`` rows with the problems the quality report looks for, made from the clean rows of ``clean_seed``:
    near-duplicate twins, conflicting answers to the same input, personal data and very short answers."""
    rng, clean = random.Random(seed), random.Random(clean_seed)
    originals = [conversation(clean, i) for i in range(n)]
    with open(path, "w") as fh:
        for i, messages in enumerate(originals):
            messages = [dict(m) for m in messages]
            kind = i % 4
            if kind == 0:
                messages[1]["content"] += " Thanks a lot!"
            elif kind == 1:
                messages[2]["content"] = f"Hi, we cannot help with order #{100000 + i}. Regards, Support"
            elif kind == 2:
                messages[1]["content"] += (
                    f" Reach me at {rng.choice(NAMES).lower()}{i}@example.com or +44 20 7946 {1000 + i % 9000}."
                )
            else:
                messages[2]["content"] = "OK."
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path
