"""The client-server API subset people drive matrixfed with (Element, matrix-nio, curl).

One module per endpoint group, all registered on the client listener's
``JsonResource`` by ``api.install_client_api``:

- ``login``: versions, well-known, login, logout, whoami, open registration;
- ``admin``: Synapse-compatible shared-secret registration;
- ``rooms``: createRoom, join, leave, invite, kick, ban, joined_rooms, join progress;
- ``events``: send (idempotent per token and txnId), state, messages, members;
- ``sync``: initial and incremental /sync with long polling;
- ``directory``: room aliases and profiles, local or over federation;
- ``backfill``: older history from other servers for /messages.

Handlers declare access-token auth with ``TokenAuth.required`` (``common``); the
room work itself is done by the room engine and the join coordinator.
"""
