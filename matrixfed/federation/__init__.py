"""matrixfed.federation."""
