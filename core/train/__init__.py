"""Training: losses, one step of each stage, and the two loops (pre-training the prior,
adapting it to one person).

Modules: ``objectives``, ``stages``, ``pretrain``, ``adapt``.
"""
