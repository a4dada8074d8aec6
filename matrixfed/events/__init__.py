"""matrixfed.events."""
