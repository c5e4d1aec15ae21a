"""Asking the apps above: a lower app's page or form sends a signal, each upper app that connected a receiver in its
AppConfig.ready answers a dict, and the answers are merged (docs/ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

from django.dispatch import Signal


def answers(signal: Signal, **kwargs) -> dict:
    merged: dict = {}
    for _receiver, answer in signal.send(sender=None, **kwargs):
        merged.update(answer or {})
    return merged
