"""``matrixfed join`` draws a progress bar from the server's join progress endpoint."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from matrixfed.cli.main import main
from matrixfed.joins.api import JoinProgress
from tests.clientapi.harness import ClientApiCase
from tests.clientapi.test_rooms import create
from tests.harness.servers import eventually


class GatedJoiner:
    """The real join coordinator behind a gate, reporting progress while held,
    so a test can look at a join that is still running."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate: Deferred[None] = Deferred()
        self.waiting = False

    async def join(
        self,
        target: str,
        user_id: str,
        *,
        servers: Sequence[str] = (),
        progress: Callable[[Any], None] | None = None,
    ) -> Any:
        if progress is not None:
            progress(JoinProgress("verify", 2500, 10000))
        self.waiting = True
        await self.gate
        return await self.inner.join(target, user_id, servers=servers, progress=progress)

    async def leave(self, room_id: str, user_id: str, *, servers: Sequence[str] = ()) -> Any:
        return await self.inner.leave(room_id, user_id, servers=servers)


class JoinProgressTests(ClientApiCase, unittest.TestCase):
    async def test_progress_endpoint_and_bar(self) -> None:
        gated: list[GatedJoiner] = []

        def wrap(inner: Any) -> GatedJoiner:
            gated.append(GatedJoiner(inner))
            return gated[0]

        api = await self.make_api(wrap_joiner=wrap)
        _, alice = await api.register("alice")
        _, bob = await api.register("bob")
        room_id = await create(api, alice, preset="public_chat")
        path = f"/_matrix/client/unstable/org.matrixfed/join_progress?room={room_id}"
        code, body = await api.call("GET", path, token=bob)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))

        out, err = io.StringIO(), io.StringIO()

        def run_cli() -> int:
            with redirect_stdout(out), redirect_stderr(err):
                return main(["join", room_id, "--url", api.listener.base, "--token", bob])

        cli = deferToThread(run_cli)
        await eventually(lambda: gated[0].waiting, "the join to start")
        code, body = await api.call("GET", path, token=bob)
        self.assertEqual((code, body), (200, {"stage": "verify", "done": 2500, "total": 10000}))
        # Someone else does not see bob's join.
        code, _ = await api.call("GET", path, token=alice)
        self.assertEqual(code, 404)
        await eventually(lambda: "2500/10000" in err.getvalue(), "the bar to be drawn")
        gated[0].gate.callback(None)
        self.assertEqual(await cli, 0)
        self.assertEqual(out.getvalue().strip(), room_id)
        self.assertIn("[#######", err.getvalue())
        self.assertTrue(err.getvalue().rstrip().endswith("joined     1/1"))
        code, _ = await api.call("GET", path, token=bob)
        self.assertEqual(code, 404)
