"""The demo task: customer-support replies in a fixed house style, generated from templates.

Each example gives the model a customer's name, their product, their message and the facts support
knows; the ideal reply greets the customer by name, answers in one sentence from the facts, and ends
with the fixed sign-off::

    Hi Maria,
    Please hold the power button on your Aurora Kettle for 5 seconds to reset it.
    Warm regards, Lumo Care Team

A 135M model does not write like that out of the box (it rambles and signs off however it likes);
after a few minutes of LoRA on a CPU it does. Short examples keep CPU training fast.

Pure Python, no Django: the seed command, the tests and the benchmark all call ``generate_examples``.
Everything is derived from one seeded ``random.Random``, so the same seed gives the same data.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

COMPANY = "Lumo"
GREETING = "Hi {name},"
SIGN_OFF = "Warm regards, Lumo Care Team"

# What the prompt-only baseline is told: the same rules, in words, without any training.
HOUSE_STYLE_PROMPT = (
    "You are Lumo's customer support assistant. Reply in Lumo's house style, exactly three lines: "
    "line 1 is 'Hi <customer name>,'; line 2 is one sentence that answers the message using only the "
    "facts given; line 3 is 'Warm regards, Lumo Care Team'. Nothing else."
)

NAMES = [
    "Maria",
    "James",
    "Aisha",
    "Chen",
    "Olga",
    "Tomas",
    "Priya",
    "Lucas",
    "Fatima",
    "Noah",
    "Ingrid",
    "Kenji",
    "Zara",
    "Mateo",
    "Hannah",
    "Omar",
    "Sofia",
    "Arjun",
    "Elena",
    "Kwame",
    "Yuki",
    "Daniel",
    "Leila",
    "Pedro",
    "Grace",
    "Ivan",
    "Amara",
    "Felix",
    "Mei",
    "Samuel",
    "Nadia",
    "Hugo",
    "Chloe",
    "Ravi",
    "Anna",
    "Diego",
    "Freya",
    "Tariq",
    "Lina",
    "Oscar",
    "Ines",
    "Kofi",
    "Emma",
    "Bilal",
    "Rosa",
    "Viktor",
    "Julia",
    "Sipho",
]

# (product, a part of it that a customer might mention)
PRODUCTS = [
    ("Aurora Kettle", "lid"),
    ("Nimbus Headphones", "ear cushion"),
    ("Glow Desk Lamp", "lamp arm"),
    ("Breeze Fan", "front grille"),
    ("Pico Speaker", "charging port"),
    ("Orbit Robot Vacuum", "side brush"),
    ("Crema Coffee Grinder", "bean hopper"),
    ("Tide Water Bottle", "cap"),
    ("Ember Toaster", "crumb tray"),
    ("Halo Smart Bulb", "base"),
    ("Drift Backpack", "zip"),
    ("Pulse Fitness Band", "strap"),
]

CITIES = ["Leeds", "Porto", "Lyon", "Utrecht", "Malmo", "Graz", "Cork", "Bilbao"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]
OPENERS = ["", "Hello, ", "Hi there, ", "Hey, ", "Good morning, ", "Quick question: ", "Help please, "]


@dataclass(frozen=True)
class Problem:
    """One kind of customer problem: what customers write, what support knows, and the ideal answer."""

    key: str
    messages: tuple[str, ...]
    fact: str
    answer: str


PROBLEMS = [
    Problem(
        "no_power",
        (
            "my {product} won't turn on.",
            "nothing happens when I press the button on my {product}.",
            "the {product} seems dead, no lights at all.",
        ),
        "Hold the power button for {secs} seconds to reset the device.",
        "Please hold the power button on your {product} for {secs} seconds to reset it.",
    ),
    Problem(
        "late_delivery",
        (
            "where is my {product}? It still hasn't arrived.",
            "my order for the {product} is late.",
            "I ordered a {product} ages ago and nothing came.",
        ),
        "Order {order} left the warehouse on {weekday}; delivery takes up to {days} days.",
        "Your order {order} left our warehouse on {weekday} and will arrive within {days} days.",
    ),
    Problem(
        "refund",
        (
            "I sent back my {product}, when do I get my money?",
            "how long does a refund for the {product} take?",
            "I returned the {product} and want my refund.",
        ),
        "Refunds are paid within {days} business days after the return arrives.",
        "Your refund will be paid within {days} business days after your {product} reaches us.",
    ),
    Problem(
        "warranty",
        (
            "is my {product} still under warranty?",
            "my {product} broke, does the warranty cover it?",
            "what warranty comes with the {product}?",
        ),
        "The {product} has a {years}-year warranty for manufacturing faults.",
        "Your {product} has a {years}-year warranty that covers manufacturing faults.",
    ),
    Problem(
        "discount",
        (
            "the code {code} doesn't work for the {product}.",
            "why is my discount code {code} rejected?",
            "I can't use {code} at checkout for the {product}.",
        ),
        "Code {code} expired on {month} {day}; code {code2} gives {pct}% off this month.",
        "Code {code} expired on {month} {day}, but code {code2} gives you {pct}% off this month.",
    ),
    Problem(
        "battery",
        (
            "the battery of my {product} drains really fast.",
            "my {product} is empty after a few hours.",
            "battery life on the {product} is terrible since last week.",
        ),
        "Firmware {ver} fixes the battery drain; install it from the Lumo app.",
        "Please install firmware {ver} from the Lumo app, which fixes the battery drain on your {product}.",
    ),
    Problem(
        "missing_part",
        (
            "the {part} was missing from my {product} box.",
            "my {product} arrived without the {part}.",
            "there's no {part} in the {product} package.",
        ),
        "Missing parts are posted free of charge within {days} days.",
        "We will post the missing {part} free of charge within {days} days.",
    ),
    Problem(
        "address",
        (
            "I need to change the delivery address for my {product}.",
            "I moved, can my {product} go to a new address?",
            "wrong address on my {product} order, can I fix it?",
        ),
        "Addresses can be changed in Account > Orders until the order ships.",
        "You can change the address in Account > Orders until your {product} ships.",
    ),
    Problem(
        "rattle",
        (
            "my {product} makes a rattling noise.",
            "there's a strange rattle coming from the {product}.",
            "the {product} rattles when I use it.",
        ),
        "A rattle usually means the {part} is loose; tighten it by hand.",
        "The rattle usually means the {part} is loose, so please tighten it by hand.",
    ),
    Problem(
        "cancel_plan",
        (
            "how do I cancel the {product} care plan?",
            "I want to stop my {product} subscription.",
            "please cancel my care plan for the {product}.",
        ),
        "Plans can be cancelled any time under Settings > Plan, with no fee.",
        "You can cancel any time under Settings > Plan, and there is no fee.",
    ),
    Problem(
        "store_hours",
        (
            "can I pick up a {product} at the {city} store, when are you open?",
            "what are the opening hours of your {city} shop?",
            "is the {city} store open on Saturday?",
        ),
        "The {city} store is open {open} to {close}, Monday to Saturday.",
        "Our {city} store is open from {open} to {close}, Monday to Saturday.",
    ),
    Problem(
        "exchange",
        (
            "can I swap my {product} for another colour?",
            "I'd like the {product} in a different colour.",
            "the colour of my {product} isn't what I expected, can I exchange it?",
        ),
        "Colour exchanges are free within {days} days of delivery.",
        "You can exchange your {product} for another colour free of charge within {days} days of delivery.",
    ),
    Problem(
        "pairing",
        (
            "my {product} won't connect to my phone.",
            "the app can't find my {product}.",
            "pairing the {product} with the app keeps failing.",
        ),
        "Turn Bluetooth off and on and keep the device within {m} metres while pairing.",
        "Please turn Bluetooth off and on and keep your {product} within {m} metres of your phone while pairing.",
    ),
    Problem(
        "invoice",
        (
            "I need an invoice for my {product}.",
            "where can I download the receipt for the {product}?",
            "my company needs a VAT invoice for the {product}.",
        ),
        "Invoices are downloadable as PDF under Account > Orders > {order}.",
        "You can download the invoice as a PDF under Account > Orders > {order}.",
    ),
    Problem(
        "price_drop",
        (
            "the {product} is cheaper now than when I bought it.",
            "I just saw the {product} on sale, I paid more!",
            "the price of the {product} dropped after I ordered.",
        ),
        "The difference is refunded if the price drops within {days} days of purchase.",
        "We will refund the difference because the price dropped within {days} days of your purchase.",
    ),
    Problem(
        "cleaning",
        (
            "how do I clean the {product}?",
            "can the {part} of my {product} go in the dishwasher?",
            "what's the right way to wash the {product}?",
        ),
        "The {part} is dishwasher-safe; wipe the rest with a damp cloth.",
        "The {part} is dishwasher-safe, and the rest of your {product} only needs a damp cloth.",
    ),
]


@dataclass
class DemoExample:
    """One generated conversation, with the flaw it was built to have (if any) and its provenance."""

    messages: list[dict]
    metadata: dict = field(default_factory=dict)
    flaw: str = ""

    @property
    def ideal_output(self) -> str:
        return self.messages[-1]["content"]

    def as_openai_line(self) -> dict:
        return {"messages": self.messages}


def format_input(*, name: str, product: str, message: str, facts: str) -> str:
    return f"Customer: {name}\nProduct: {product}\nMessage: {message}\nFacts: {facts}"


def format_reply(*, name: str, answer: str) -> str:
    return f"{GREETING.format(name=name)}\n{answer}\n{SIGN_OFF}"


def _slots(rng: random.Random) -> dict:
    codes = ["SPRING", "WELCOME", "LUMO", "SAVE", "HELLO", "THANKS", "AUTUMN", "BRIGHT"]
    opening = rng.choice(["8am", "9am", "10am"])
    return {
        "secs": rng.choice([3, 5, 8, 10, 15]),
        "order": f"#{rng.randint(10000, 99999)}",
        "weekday": rng.choice(WEEKDAYS),
        "days": rng.choice([2, 3, 5, 7, 10, 14, 30]),
        "years": rng.choice([1, 2, 3, 5]),
        "code": f"{rng.choice(codes)}{rng.randint(10, 30)}",
        "code2": f"{rng.choice(codes)}{rng.randint(31, 60)}",
        "month": rng.choice(MONTHS),
        "day": rng.randint(1, 28),
        "pct": rng.choice([10, 15, 20, 25]),
        "ver": f"{rng.randint(1, 4)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
        "m": rng.choice([1, 2, 3]),
        "city": rng.choice(CITIES),
        "open": opening,
        "close": rng.choice(["6pm", "7pm", "8pm"]),
    }


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_example(rng: random.Random) -> DemoExample:
    name = rng.choice(NAMES)
    product, part = rng.choice(PRODUCTS)
    problem = rng.choice(PROBLEMS)
    slots = {**_slots(rng), "product": product, "part": part, "name": name}
    opener = rng.choice(OPENERS)
    variant = rng.randrange(len(problem.messages))
    body = problem.messages[variant].format(**slots)
    message = opener + body if opener else _capitalize(body)
    facts = problem.fact.format(**slots)
    answer = problem.answer.format(**slots)
    user = format_input(name=name, product=product, message=message, facts=facts)
    return DemoExample(
        messages=[
            {"role": "user", "content": user},
            {"role": "assistant", "content": format_reply(name=name, answer=answer)},
        ],
        metadata={"demo": True, "problem": problem.key, "variant": variant, "customer": name, "product": product},
    )


def generate_examples(count: int = 300, *, seed: int = 7) -> list[DemoExample]:
    """``count`` clean examples, deterministic for a seed.

    No two share a problem, message wording and product: examples that differ only in the name and a
    number would be near-duplicates with different answers, which the quality report rightly flags.
    """
    limit = len(PROBLEMS) * len(PRODUCTS) * 3
    if count > limit:
        raise ValueError(f"The demo templates make at most {limit} distinct examples; asked for {count}.")
    rng = random.Random(seed)
    seen: set[str] = set()
    examples: list[DemoExample] = []
    attempts = 0
    while len(examples) < count:
        attempts += 1
        if attempts > count * 50:
            raise ValueError(f"Could not make {count} distinct demo examples; ask for fewer.")
        example = make_example(rng)
        key = _key(example)
        if key in seen:
            continue
        seen.add(key)
        examples.append(example)
    return examples


def _key(example: DemoExample) -> str:
    meta = example.metadata
    return f"{meta['problem']}|{meta['variant']}|{meta['product']}"


def flawed_examples(clean: list[DemoExample], *, seed: int = 7) -> list[DemoExample]:
    """Examples with the mistakes real datasets have, so the quality report has something to find.

    Each is marked with ``flaw``. Two spoil a clean example: a conflicting answer to the same input and a
    near-duplicate. Four have inputs of their own (so fixing the reply makes a good new example): a
    too-short reply, personal data in the reply, a rambling reply far longer than the house style
    allows, and one that breaks the style (no greeting, no sign-off). An empty reply is not among them:
    the importer refuses empty content.
    """
    if len(clean) < 2:
        raise ValueError("Flawed examples are built from at least 2 clean ones.")
    rng = random.Random(seed + 1)
    conflicted, duplicated = rng.sample(clean, 2)
    taken = {_key(e) for e in clean}
    fresh: list[DemoExample] = []
    while len(fresh) < 4:
        example = make_example(rng)
        if _key(example) not in taken:
            taken.add(_key(example))
            fresh.append(example)

    def flawed(base: DemoExample, reply: str, flaw: str, user: str | None = None) -> DemoExample:
        return DemoExample(
            messages=[
                {"role": "user", "content": user or base.messages[0]["content"]},
                {"role": "assistant", "content": reply},
            ],
            metadata={**base.metadata, "flaw": flaw},
            flaw=flaw,
        )

    conflicting = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), base_answer(conflicted))
    if conflicting == base_answer(conflicted):
        conflicting = "Sorry, we cannot help with that."
    short, personal, rambling, off_style = fresh
    return [
        flawed(
            conflicted, format_reply(name=conflicted.metadata["customer"], answer=conflicting), "conflicting_answer"
        ),
        flawed(
            duplicated,
            duplicated.ideal_output.replace("\n", " \n") + " ",
            "near_duplicate",
            user=duplicated.messages[0]["content"].replace("Message: ", "Message:  "),
        ),
        flawed(short, "ok", "too_short"),
        flawed(
            personal,
            format_reply(
                name=personal.metadata["customer"],
                answer=f"Call me on +44 7700 900{rng.randint(100, 999)} or write to "
                f"{personal.metadata['customer'].lower()}.agent@lumo-support.example and I'll sort it out.",
            ),
            "personal_data",
        ),
        flawed(
            rambling,
            format_reply(
                name=rambling.metadata["customer"],
                answer=" ".join(
                    [base_answer(rambling)]
                    + [
                        "We know how frustrating this can be, and we truly appreciate your patience while we look into "
                        "every possible cause, check with our warehouse team, review your order history and consult "
                        "the product specialists who know this device best."
                    ]
                    * 4
                ),
            ),
            "rambling",
        ),
        flawed(off_style, base_answer(off_style), "off_style"),
    ]


def base_answer(example: DemoExample) -> str:
    """The one-sentence answer between greeting and sign-off of a clean example."""
    lines = example.ideal_output.split("\n")
    return lines[1] if len(lines) == 3 else example.ideal_output


# --- Checking a reply against the house style (the benchmark's automatic judge) -----------------------
@dataclass
class StyleCheck:
    greets_by_name: bool
    signs_off: bool
    one_sentence: bool
    uses_facts: bool

    @property
    def all_pass(self) -> bool:
        return self.greets_by_name and self.signs_off and self.one_sentence and self.uses_facts


def parse_input(user: str) -> dict:
    """The name, product, message and facts of a demo input (keys lower-case)."""
    fields = {}
    for line in user.split("\n"):
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def check_reply(reply: str, user: str) -> StyleCheck:
    """How a reply measures up to the house style for the given input.

    greets_by_name: the first line is exactly 'Hi <name>,'. signs_off: the last line is the sign-off.
    one_sentence: exactly one line between them, one sentence. uses_facts: every number in the facts
    appears in the reply and no other number does (the answer sticks to the facts).
    """
    fields = parse_input(user)
    lines = [line.strip() for line in reply.strip().split("\n") if line.strip()]
    name = fields.get("customer", "")
    greets = bool(lines) and lines[0] == GREETING.format(name=name)
    signs = bool(lines) and lines[-1] == SIGN_OFF
    middle = lines[1:-1] if greets and signs else []
    one_sentence = len(middle) == 1 and len(re.findall(r"[.!?](?:\s|$)", middle[0])) == 1
    fact_numbers = set(re.findall(r"\d+(?:\.\d+)*", fields.get("facts", "")))
    reply_numbers = set(re.findall(r"\d+(?:\.\d+)*", " ".join(lines[1:-1] if len(lines) > 2 else lines)))
    uses_facts = reply_numbers == fact_numbers if fact_numbers else not reply_numbers
    return StyleCheck(greets_by_name=greets, signs_off=signs, one_sentence=one_sentence, uses_facts=uses_facts)


# The rubric the demo project starts with: what "good" means for this task, in reviewers' words.
RUBRIC_NAME = "House-style support reply"
RUBRIC_CRITERIA = [
    {
        "name": "Greets by name",
        "description": "The reply opens with exactly 'Hi <customer name>,' on its own line, using the name given.",
        "scale": "pass_fail",
        "anchors": {
            "0": "No greeting, another greeting, or the wrong name.",
            "1": "'Hi <name>,' with the customer's name.",
        },
        # automatic checks (worker/checks.py): kind, text ({customer} comes from the input's "Customer:" line), number
        "checks": [("starts_with", GREETING.replace("{name}", "{customer}") + "\n", None)],
    },
    {
        "name": "House sign-off",
        "description": "The reply ends with 'Warm regards, Lumo Care Team' on its own line, and nothing after it.",
        "scale": "pass_fail",
        "anchors": {
            "0": "Another sign-off, none, or text after it.",
            "1": "'Warm regards, Lumo Care Team' as the last line.",
        },
        "checks": [("ends_with", "\n" + SIGN_OFF, None)],
    },
    {
        "name": "Answers from the facts",
        "description": "The answer uses the facts given (numbers, steps, places) and invents nothing.",
        "scale": "likert5",
        "anchors": {
            "1": "Ignores the facts or contradicts them.",
            "2": "Mentions the topic but gets the key fact wrong or leaves it out.",
            "3": "Gives the key fact but adds invented details.",
            "4": "Correct and from the facts, with a small slip in wording.",
            "5": "Exactly the facts given, stated correctly.",
        },
        "checks": [("similarity", "", 0.5)],
    },
    {
        "name": "One sentence, no padding",
        "description": "Between greeting and sign-off there is one clear sentence: no apologies, no filler, no lists.",
        "scale": "likert5",
        "anchors": {
            "1": "Long, rambling or several paragraphs.",
            "2": "Several sentences with filler.",
            "3": "Two or three sentences.",
            "4": "One sentence with a little filler.",
            "5": "One clear sentence.",
        },
        "checks": [("max_sentences", "", 2), ("max_words", "", 40)],  # the sign-off line counts as a sentence
    },
]
