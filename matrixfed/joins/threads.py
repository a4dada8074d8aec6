"""Running the join's pure CPU work on a thread pool.

``PoolRunner`` implements ``ThreadRunner`` with ``deferToThreadPool``: the
verification chunks and the auth pass run there, so the reactor keeps
serving while a big room is checked (PyNaCl releases the GIL, so two
threads verify signatures about twice as fast on two cores).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.threads import deferToThreadPool


class PoolRunner:
    """Runs functions on ``threadpool``, results delivered on ``reactor``."""

    def __init__(self, *, reactor: Any, threadpool: Any) -> None:
        """Args:
        reactor: the reactor results are delivered on.
        threadpool: a started ``twisted.python.threadpool.ThreadPool``
            (``reactor.getThreadPool()`` in production).
        """
        self._reactor = reactor
        self._pool = threadpool

    async def run(self, func: Any, *args: Any) -> Any:
        """``func(*args)`` on the pool; its result or exception."""
        return await deferToThreadPool(self._reactor, self._pool, func, *args)
