"""matrixfed.state."""
