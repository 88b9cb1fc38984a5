"""The model: Gaussian sets, motion fields, the talking head that combines them, the one
checkpoint format and the avatar folder.

Modules: ``gaussians``, ``motion_field``, ``head``, ``checkpoint``, ``avatar``.
"""
