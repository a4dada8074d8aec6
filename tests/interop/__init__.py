"""Interoperability with Synapse: real Synapse and matrixfed processes on loopback."""
