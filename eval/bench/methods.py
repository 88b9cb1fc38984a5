"""The benchmark's methods, audio-ablation controls and their display names.

Methods (one table row each, METHOD.md section 8 protocol):

``instag``      the avatar adapted with the shipped prior (``core.adapt``).
``scratch``     the same model, preset, seed and steps with nothing pre-trained: no motion-field
                prior, and a mouth drive that is the person's own audio-to-mouth model alone,
                trained from scratch on the same training seconds (``person_weight`` 1,
                :mod:`core.train.person_mouth`). Only the recording's audio-video offset is
                measured with the shipped audio-to-mouth prior, as data preparation, the same
                for both methods.
``retrieval``   per test frame, the training frame with the nearest audio window, its head
                moved onto the test frame's plate and pose (``eval.bench.baselines``).
``loop``        the training frames looped ping-pong, each head moved onto the test frame's
                plate and pose like ``retrieval``: real pixels, no relation to the test audio.
``mean-mouth``  the ``instag`` avatar with its audio code held at the mean over its training
                frames: the same pixels machinery with a static mouth (``eval.bench.controls``).
``shifted``     the recorded test frames with the test audio 0.4 s late: a floor for the
                audio-based sync scores only (its pixels are the ground truth).

Controls of every adapted method (``eval.bench.controls``): the same avatar, plates, poses and
expression driven by ``shuffled`` (time-shuffled audio windows) and ``silence``.
"""
from __future__ import annotations

METHODS: tuple[str, ...] = ("instag", "scratch", "retrieval", "loop", "mean-mouth", "shifted")
#: Methods whose cell adapts an avatar (the expensive part of a run).
ADAPTED: tuple[str, ...] = ("instag", "scratch")
#: Methods that render an avatar, and which avatar they render.
AVATAR_OF: dict[str, str] = {"instag": "instag", "scratch": "scratch", "mean-mouth": "instag"}
#: Audio-ablation controls rendered for every adapted method.
CONTROLS: tuple[str, ...] = ("shuffled", "silence")
#: Methods whose pixels are scored against the recording (``shifted`` is the recording).
RENDERED: tuple[str, ...] = ("instag", "scratch", "retrieval", "loop", "mean-mouth")

#: Display names (tables, plots, videos).
LABELS: dict[str, str] = {
    "instag": "InsTaG (prior)", "scratch": "from scratch", "retrieval": "audio retrieval",
    "loop": "loop (no lip sync)", "mean-mouth": "mean mouth (static)",
    "shifted": "real, audio +0.4 s", "gt": "ground truth",
    "shuffled": "shuffled audio", "silence": "silence"}
#: Visible marks of the side-by-side panels that are not the recording.
MARKS: dict[str, str] = {"instag": "AI-generated", "scratch": "AI-generated",
                         "retrieval": "synthetic composite", "loop": "synthetic composite",
                         "mean-mouth": "AI-generated"}


def check_methods(methods: list[str]) -> list[str]:
    """``methods`` in the canonical order; ValueError naming unknown ones."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    return [m for m in METHODS if m in methods]
