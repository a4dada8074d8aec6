"""matrixfed.cli."""
