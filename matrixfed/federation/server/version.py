"""``GET /_matrix/federation/v1/version``: which software answers.

Authentication is optional: an X-Matrix header, when sent, is verified like
everywhere else under ``/_matrix/federation/`` (a bad one is refused with 401),
but anyone may ask without one, as the spec allows.
"""

from __future__ import annotations

from matrixfed import __version__
from matrixfed.federation.server.endpoint import ApiRequest, AuthMode, Endpoint, JsonResponse

__all__ = ["SERVER_SOFTWARE_NAME", "version_endpoints"]

SERVER_SOFTWARE_NAME = "matrixfed"


async def _version(request: ApiRequest) -> JsonResponse:
    return 200, {"server": {"name": SERVER_SOFTWARE_NAME, "version": __version__}}


def version_endpoints() -> list[Endpoint]:
    """The version endpoint."""
    return [
        Endpoint("GET", "/_matrix/federation/v1/version", _version, auth=AuthMode.OPTIONAL),
    ]
