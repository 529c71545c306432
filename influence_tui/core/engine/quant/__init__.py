"""Weights kept small in memory and the kernels that multiply by them (see :mod:`.packed`)."""
