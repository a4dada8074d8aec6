"""matrixfed.rooms."""
