"""Corridor: quantum-safe key distribution for connected mobility.

Layers (a layer may import the ones above it, never below):
``link`` -> ``distill`` -> ``kms`` -> ``hybrid`` -> ``mobility`` -> ``net`` ->
``inventory`` -> ``web``/``cli``.
"""

__version__ = "0.1.0"
