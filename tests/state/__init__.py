"""Tests for matrixfed.state: state resolution v1, v2 and v2.1."""
