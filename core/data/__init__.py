"""Preparing a clip: media I/O, audio features, FaceMesh landmarks, the crop, the head pose,
masks and plates, expression signals, the processed-clip folder and its loader.

Modules: ``media``, ``audio``, ``landmarks``, ``crop``, ``pose``, ``masks``, ``expression``,
``preprocess`` (writes a processed-clip folder), ``dataset`` (loads one).
"""
