"""dslc: a compiler for the .nn declarative deep-learning language."""

__version__ = "0.1.0"
