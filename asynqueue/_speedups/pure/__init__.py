"""
Pure-Python twins of the compiled ``_speedups`` modules, with identical
names and behaviour; selected by ``ASYNQUEUE_PUREPYTHON=1`` or when the
extensions were not built.
"""
