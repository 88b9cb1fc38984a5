"""The benchmark's methods: their names and display labels (shared by the benchmark and its
plots)."""
from __future__ import annotations

#: Method names, in table order.
METHODS: tuple[str, ...] = ("instag", "scratch", "retrieval", "loop", "shifted")
#: Display names (tables, plots, videos).
LABELS: dict[str, str] = {
    "instag": "InsTaG (prior)", "scratch": "from scratch", "retrieval": "audio retrieval",
    "loop": "loop (no lip motion)", "shifted": "real, audio +0.4 s", "gt": "ground truth"}
