"""Test harness for federation tests.

- ``tests.harness.fakeremote``: ``FakeRemote``, a scriptable fake homeserver
  (own name ``127.0.0.1:<port>``, own ed25519 key and key server, real TLS from
  a test CA, handlers per method and path template, misbehaviours ``Hang``,
  ``Garbage``, ``CloseConnection``, recorded requests with X-Matrix checked,
  a signing ``client`` and ``send_transaction`` to talk to real servers);
  ``RemoteRoom`` (a ``RoomBuilder`` that can ``follow`` a room held by a
  matrixfed store and fill make_* templates) and ``sign_pdu_as``.
- ``tests.harness.servers``: ``TestNetwork`` starting real matrixfed services
  (``make_service``) on loopback with TLS certificates from the same CA,
  ``ServerHandle`` (name, service, store, engine, sender, joiner, URLs), and
  ``eventually`` for waiting on other servers' background work.
"""
