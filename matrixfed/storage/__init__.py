"""matrixfed.storage."""
