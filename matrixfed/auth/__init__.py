"""matrixfed.auth."""
