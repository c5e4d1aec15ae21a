"""Runs in people's words: one mapping of hyperparameter -> label, unit and help, used by the launch form,
the run page and the comparison, and the launch estimate as one sentence.

Keys are the worker's ``TrainConfig`` fields (``Run.hyperparameters``); pages never show them raw.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hyperparameter:
    label: str
    unit: str = ""  # after the value: "tokens", "examples"
    help: str = ""


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "epochs": Hyperparameter("Epochs", "", "passes over the training split"),
    "max_steps": Hyperparameter("Max steps", "steps", "a number above 0 stops training there, whatever the epochs"),
    "learning_rate": Hyperparameter("Learning rate", "", "how far each step moves the adapter; too high diverges"),
    "lr_scheduler": Hyperparameter("Learning-rate schedule", "", "how the learning rate changes over the run"),
    "warmup_ratio": Hyperparameter(
        "Warm-up", "of the steps", "the learning rate rises from 0 over this share of steps"
    ),
    "lora_r": Hyperparameter("LoRA rank", "", "size of the adapter: larger learns more and trains slower"),
    "lora_alpha": Hyperparameter("LoRA scale (alpha)", "", "the adapter's update is scaled by alpha / rank"),
    "lora_dropout": Hyperparameter("LoRA dropout", "", "share of the adapter's inputs dropped while training"),
    "target_modules": Hyperparameter("Adapted layers", "", "the model's layers that get an adapter"),
    "batch_size": Hyperparameter("Batch size", "examples", "examples per forward pass"),
    "grad_accum": Hyperparameter("Gradient accumulation", "batches per step", "batches summed into one optimizer step"),
    "max_seq_length": Hyperparameter("Max sequence length", "tokens", "longer examples are cut to this"),
    "save_steps": Hyperparameter("Checkpoint every", "steps", "a stopped run resumes from its last checkpoint"),
    "seed": Hyperparameter("Seed", "", "the same seed and data give the same run"),
    "memory_mode": Hyperparameter(
        "Base model in memory", "", "a 4-bit copy of the base takes a quarter of the memory and needs an NVIDIA GPU"
    ),
    "gradient_checkpointing": Hyperparameter(
        "Recompute layers to save memory", "", "keeps far fewer activations for about a third more training time"
    ),
    "beta": Hyperparameter(
        "Preference strength (beta)",
        "",
        "learning from preferences: how closely the model stays to where it started; lower lets it move further",
    ),
    "num_generations": Hyperparameter(
        "Replies per prompt", "replies", "learning from graders: replies sampled and compared for each prompt"
    ),
    "max_completion_length": Hyperparameter(
        "Longest sampled reply", "tokens", "learning from graders: a sampled reply stops at this length"
    ),
}
MEMORY_MODES = {
    "lora": "full precision (bf16 on a GPU)",
    "qlora": "4-bit (QLoRA): fits a 7-8B model on a 24 GB card",
}
CHECKPOINTING = {"auto": "when the card needs it", "on": "always", "off": "never", True: "on", False: "off"}
# How wide a run trains (Run.devices, Run.nodes): not hyperparameters (the same run on more devices learns the same).
SCALE = {
    "devices": Hyperparameter(
        "Devices per node", "", "GPUs (or CPU processes) training the run together; the batch is split over them"
    ),
    "nodes": Hyperparameter("Nodes", "", "workers of the queue training the run together"),
}

SCHEDULES = {
    "cosine": "cosine decay",
    "linear": "linear decay",
    "constant": "constant",
    "constant_with_warmup": "constant after warm-up",
}
LAYERS = {
    "q_proj": "attention query",
    "k_proj": "attention key",
    "v_proj": "attention value",
    "o_proj": "attention output",
    "gate_proj": "MLP gate",
    "up_proj": "MLP up",
    "down_proj": "MLP down",
}


def form_label(key: str) -> str:
    """A form field's label: the label with its unit, unless the label already says it ("Max steps")."""
    spec = HYPERPARAMETERS[key]
    return (
        f"{spec.label} ({spec.unit})" if spec.unit and spec.unit.split()[-1] not in spec.label.lower() else spec.label
    )


def label(key: str) -> str:
    spec = HYPERPARAMETERS.get(key)
    return spec.label if spec else key.replace("_", " ").capitalize()


def value_text(key: str, value) -> str:
    """A hyperparameter's value with its unit: "256 tokens", "5% of the steps", "attention query, attention key"."""
    if value is None or value == "":
        return "—"
    if key == "max_steps" and int(value) <= 0:
        return "none (the epochs decide)"
    if key == "lr_scheduler":
        return SCHEDULES.get(value, str(value))
    if key == "memory_mode":
        return MEMORY_MODES.get(value, str(value))
    if key == "gradient_checkpointing":
        return CHECKPOINTING.get(value, str(value))
    if key == "target_modules":
        return ", ".join(LAYERS.get(m, m) for m in (value if isinstance(value, list | tuple) else [value]))
    if key in ("warmup_ratio", "lora_dropout") and isinstance(value, int | float):
        text = f"{value * 100:g}%"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    unit = HYPERPARAMETERS[key].unit if key in HYPERPARAMETERS else ""
    return f"{text} {unit}" if unit else text


def _order(keys) -> list[str]:
    known = [k for k in HYPERPARAMETERS if k in keys]
    return known + sorted(k for k in keys if k not in HYPERPARAMETERS)


def describe(hyperparameters: dict) -> list[dict]:
    """Rows for a page: label, value with unit, help; in one fixed order (the mapping's)."""
    return [
        {
            "key": k,
            "label": label(k),
            "value": value_text(k, hyperparameters[k]),
            "help": HYPERPARAMETERS[k].help if k in HYPERPARAMETERS else "",
        }
        for k in _order(hyperparameters)
    ]


def compare_rows(hyperparameter_sets: list[dict]) -> list[dict]:
    """One row per hyperparameter any of the runs set: label, help and each run's value (differences flagged)."""
    keys = _order({k for hp in hyperparameter_sets for k in hp})
    rows = []
    for k in keys:
        values = [value_text(k, hp.get(k)) for hp in hyperparameter_sets]
        rows.append(
            {
                "key": k,
                "label": label(k),
                "help": HYPERPARAMETERS[k].help if k in HYPERPARAMETERS else "",
                "values": values,
                "differs": len(set(values)) > 1,
            }
        )
    return rows


PRESET_COLUMNS = ("epochs", "lora_r", "learning_rate", "max_seq_length", "memory_mode")


def preset_table(presets: dict[str, dict]) -> dict:
    """The launch page's table of presets: labelled columns, values with units."""
    return {
        "columns": [label(k) for k in PRESET_COLUMNS],
        "rows": [(name, [value_text(k, values.get(k)) for k in PRESET_COLUMNS]) for name, values in presets.items()],
    }


def approximate_time(seconds: float) -> str:
    """An estimate's time, rounded as people say it: "under a minute", "about 4 minutes", "about 2.5 hours"."""
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"about {seconds / 3600:.1f} hours".replace(".0 hours", " hours")


def memory_text(megabytes: float) -> str:
    return f"{megabytes / 1024:.1f} GB" if megabytes >= 100 else f"{int(megabytes)} MB"


def estimate_words(estimate: dict | None) -> dict | None:
    """The launch estimate for a page (templates/runs/run_form.html#estimate_words says it as one sentence:
    "About 4 minutes and 0.7 GB on this worker; 30 steps."), with where it comes from; None without one."""
    if not estimate or "seconds" not in estimate or "steps" not in estimate:
        return None
    words = {
        "time": approximate_time(estimate["seconds"]),
        "steps": int(estimate["steps"]),
        "memory": memory_text(estimate["memory_mb"]) if estimate.get("memory_mb") else "",
        "basis": "",
    }
    if "tokens" in estimate:
        examples = int(estimate.get("examples", 0))
        basis = (
            f"{examples:,} training example{'s' if examples != 1 else ''}, {int(estimate['tokens']):,} tokens to train"
        )
        if estimate.get("tokens_per_second"):
            source = (
                "measured on this model's finished runs"
                if estimate.get("throughput_source") == "measured"
                else "assumed: no run of this model has finished here yet"
            )
            basis += f" at {estimate['tokens_per_second']:g} tokens/s ({source})"
        words["basis"] = basis + "."
    words["fit"] = memory_fit_text(estimate)
    words["queue"], words["queue_warning"] = estimate.get("queue", ""), estimate.get("queue_warning", "")
    words["scale"], words["scale_warning"] = scale_text(estimate), estimate.get("scale_warning", "")
    return words


def scale_text(estimate: dict) -> str:
    """ "" for one device on one node, else "2 devices x 2 nodes (DDP), 2 examples per device per batch"."""
    devices, nodes = int(estimate.get("devices") or 1), int(estimate.get("nodes") or 1)
    if devices * nodes == 1:
        return ""
    text = f"{devices} device{'s' if devices != 1 else ''}" + (f" x {nodes} nodes" if nodes > 1 else "")
    per_device = estimate.get("per_device_batch")
    return (
        text
        + " (DDP)"
        + (f", {per_device} example{'s' if per_device != 1 else ''} per device per batch" if per_device else "")
    )


def memory_fit_text(estimate: dict) -> str:
    """ "Needs about 14.2 GB of GPU memory (4-bit base, layers recomputed): fits 24 GB with 9.8 GB to spare." """
    if not estimate.get("memory_mb") or "memory_mode" not in estimate:
        return ""
    how = [
        "4-bit base" if estimate["memory_mode"] == "qlora" else "full-precision base",
        "layers recomputed" if estimate.get("gradient_checkpointing") else "",
    ]
    where = "GPU memory" if estimate.get("memory_device") == "GPU" else "memory on a CPU worker"
    text = f"Needs about {estimate['memory_mb'] / 1024:.1f} GB of {where} ({', '.join(h for h in how if h)})"
    return text + (f": {estimate['fit']}." if estimate.get("fit") else ".")


def fit_rows(rows: list[dict]) -> dict:
    """The launch page's table of which memory mode fits which card: columns per tier, a row per mode."""
    return {
        "columns": [f"{tier} GB card" for tier, _ in rows[0]["tiers"]] if rows else [],
        "rows": [
            (
                ("4-bit base" if r["mode"] == "qlora" else "Full-precision base")
                + (", layers recomputed" if r["checkpointing"] else ""),
                f"{r['gb']:g} GB",
                [words for _tier, words in r["tiers"]],
            )
            for r in rows
        ],
    }
