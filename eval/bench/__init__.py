"""The parts of the benchmark that ``python -m eval.benchmark`` (:mod:`eval.benchmark`) runs:
methods and controls, the held-out protocol, baselines, one cell, scoring, tables, plots,
videos and the Ray executor. Imports :mod:`eval.metrics` and :mod:`eval.sync`, never
:mod:`eval.benchmark` or :mod:`eval.studies`."""
