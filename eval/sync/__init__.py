"""Do the lips move with the sound: SyncNet LSE-C / LSE-D and the weight-free audio-mouth
offset (:mod:`eval.sync.syncnet`), the shipped landmark sync expert
(:mod:`eval.sync.expert`) and its trainer (:mod:`eval.sync.train_expert`,
``python -m eval.sync.train_expert``). Imports only :mod:`eval.metrics` of ``eval``."""
