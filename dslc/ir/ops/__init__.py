"""The primitive op families; importing this package registers every op."""

from . import elementwise, linalg, nn, reduce, shape

__all__ = ["elementwise", "linalg", "nn", "reduce", "shape"]
