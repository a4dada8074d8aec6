"""matrixfed.clientapi."""
