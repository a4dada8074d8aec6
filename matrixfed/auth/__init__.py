"""Authorisation rules for room versions 1-12 (pure: no Twisted, no I/O).

- ``matrixfed.auth.rules``: ``check_auth_events_refs``, ``check_auth``,
  ``auth_state_from_events``.
- ``matrixfed.auth.selection``: which state an event cites as ``auth_events``.
- ``matrixfed.auth.power_levels``: power levels as the rules read them.
"""
