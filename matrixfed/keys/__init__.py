"""matrixfed.keys."""
