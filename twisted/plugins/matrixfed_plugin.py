"""twistd plugin: ``twistd -n matrixfed --server-name example.org ...``.

A thin shell over ``matrixfed.service.make_twistd_service``; the options come
from ``matrixfed.config.MatrixfedOptions``. This directory has no
``__init__.py`` on purpose (Twisted's plugin system requires that).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin
from zope.interface import implementer  # type: ignore[import-untyped]

from matrixfed.config import MatrixfedOptions


@implementer(IServiceMaker, IPlugin)
class MatrixfedServiceMaker:
    """Makes the matrixfed service for twistd."""

    tapname = "matrixfed"
    description = "A Matrix homeserver built around the federation API."
    options = MatrixfedOptions

    def makeService(self, options: Any) -> MultiService:
        # Imported here so that listing twistd's plugins stays cheap.
        from matrixfed.service import make_twistd_service

        return make_twistd_service(options)


serviceMaker = MatrixfedServiceMaker()
