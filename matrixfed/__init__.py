"""matrixfed: a Matrix homeserver built around the federation API, on Twisted."""

__version__ = "0.1.0"
