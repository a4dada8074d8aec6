"""matrixfed.state: state resolution (v1, v2, v2.1), pure.

Callers use ``matrixfed.state.resolve.resolve_state``.
"""
