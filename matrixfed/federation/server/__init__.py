"""matrixfed.federation.server."""
