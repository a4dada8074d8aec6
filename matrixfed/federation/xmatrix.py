"""X-Matrix request authentication: header parsing, signing and verification.

Spec: server-server-api.md, "Request Authentication". A request is signed by
wrapping ``{method, uri, origin, destination[, content]}`` in a JSON object and
signing it with the origin's ed25519 key (appendices, "Signing JSON"); the
signature travels in an ``Authorization: X-Matrix ...`` header.

Guarantees:
- ``parse_xmatrix_header`` follows RFC 9110's auth-param grammar as the spec
  asks: case-insensitive scheme and parameter names, parameters in any order,
  quoted or unquoted values (colons allowed unquoted for older servers),
  backslash escapes inside quotes, spaces and tabs around commas. Unknown
  parameters are ignored. A repeated parameter is refused rather than guessed.
- ``sign_request`` produces the header value the way Synapse and the spec's
  example do (lower-case names, all values quoted, no spaces).
- ``verify_request_signature`` checks the signature against one verify key.

How it fails: every problem raises ``XMatrixError`` (a ``ValueError``) whose
message is safe to return to the remote server in a 401 body.

This module is pure (no Twisted, no I/O) so both the inbound resource wrapper
and the outbound client use it.
"""

from __future__ import annotations

from typing import Any

import attrs
from nacl.signing import VerifyKey as NaclVerifyKey
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

__all__ = [
    "XMatrixAuth",
    "XMatrixError",
    "build_authorization_headers",
    "parse_xmatrix_header",
    "request_json",
    "sign_request",
    "verify_request_signature",
]

# Header values larger than this are refused unparsed: a real X-Matrix header is
# ~250 bytes (server names are at most 255 chars, a signature 86).
MAX_HEADER_LENGTH = 4096

_SCHEME = "x-matrix"
# RFC 9110 5.6.2 tchar, the characters of a parameter name.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_WS = " \t"
# An unquoted value ends at these. Stricter senders use tokens only, but the spec
# tells recipients to accept colons (server names with ports) unquoted, and older
# senders also left base64 signatures ('+', '/') unquoted: accept any visible
# character that cannot be confused with the list syntax.
_VALUE_STOP = frozenset(_WS + ',"\\')


class XMatrixError(ValueError):
    """An X-Matrix header is missing, malformed, or its signature is wrong."""


@attrs.frozen(slots=True)
class XMatrixAuth:
    """The parameters of one X-Matrix Authorization header.

    Attributes:
        origin: the server name of the sending server.
        key_id: the ID of the key that made the signature, e.g. "ed25519:a_Abc".
        signature: the unpadded base64 signature.
        destination: our server name as the sender saw it, or None when an older
            sender omitted it (allowed by the spec).
    """

    origin: str
    key_id: str
    signature: str
    destination: str | None = None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _parse_params(text: str, pos: int) -> dict[str, str]:
    params: dict[str, str] = {}
    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            break
        if text[pos] == ",":
            # Empty list elements are allowed by RFC 9110's list syntax.
            pos += 1
            continue
        start = pos
        while pos < len(text) and text[pos] in _TOKEN_CHARS:
            pos += 1
        name = text[start:pos].lower()
        if not name:
            raise XMatrixError(f"Malformed X-Matrix header at offset {start}")
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] != "=":
            raise XMatrixError(f"X-Matrix parameter {name!r} has no value")
        pos = _skip_ws(text, pos + 1)
        if pos < len(text) and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= len(text):
                    raise XMatrixError(f"Unterminated quoted value for {name!r}")
                ch = text[pos]
                if ch == "\\":
                    if pos + 1 >= len(text):
                        raise XMatrixError(f"Dangling backslash in value of {name!r}")
                    chars.append(text[pos + 1])
                    pos += 2
                    continue
                if ch == '"':
                    pos += 1
                    break
                chars.append(ch)
                pos += 1
            value = "".join(chars)
        else:
            start = pos
            while pos < len(text) and text[pos] not in _VALUE_STOP and text[pos].isprintable():
                pos += 1
            value = text[start:pos]
            if not value:
                raise XMatrixError(f"X-Matrix parameter {name!r} has an empty value")
        if name in params:
            raise XMatrixError(f"X-Matrix parameter {name!r} given twice")
        params[name] = value
        pos = _skip_ws(text, pos)
        if pos < len(text):
            if text[pos] != ",":
                raise XMatrixError(f"Malformed X-Matrix header at offset {pos}")
            pos += 1
    return params


def parse_xmatrix_header(value: str | bytes) -> XMatrixAuth:
    """Parse the value of an ``Authorization: X-Matrix ...`` header.

    Args:
        value: the header value, e.g.
            ``X-Matrix origin="a.example",key="ed25519:k",sig="...",destination="b"``.

    Returns:
        The parsed parameters.

    Raises:
        XMatrixError: the scheme is not X-Matrix, the syntax is broken, a
            parameter repeats, or origin/key/sig is missing or empty.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise XMatrixError("Authorization header is not valid UTF-8") from None
    if len(value) > MAX_HEADER_LENGTH:
        raise XMatrixError("Authorization header is too long")
    text = value.strip(_WS)
    scheme_end = 0
    while scheme_end < len(text) and text[scheme_end] not in _WS:
        scheme_end += 1
    if text[:scheme_end].lower() != _SCHEME:
        raise XMatrixError("Authorization header is not of the X-Matrix scheme")
    if scheme_end < len(text) and text[scheme_end] != " ":
        # RFC 9110: the scheme is followed by one or more spaces (not tabs).
        raise XMatrixError("Malformed X-Matrix header after the scheme")
    params = _parse_params(text, scheme_end)

    origin = params.get("origin")
    key_id = params.get("key")
    # The spec's prose names it "signature", its example and every server "sig".
    signature = params.get("sig", params.get("signature"))
    if not origin:
        raise XMatrixError("X-Matrix header has no origin")
    if not key_id:
        raise XMatrixError("X-Matrix header has no key")
    if ":" not in key_id:
        raise XMatrixError(f"X-Matrix key {key_id!r} is not of the form algorithm:version")
    if not signature:
        raise XMatrixError("X-Matrix header has no sig")
    destination = params.get("destination")
    return XMatrixAuth(
        origin=origin, key_id=key_id, signature=signature, destination=destination or None
    )


def request_json(
    method: str | bytes,
    uri: str | bytes,
    origin: str,
    destination: str,
    content: Any = None,
) -> dict[str, Any]:
    """Build the JSON object that X-Matrix signs.

    Args:
        method: the HTTP method, e.g. "PUT".
        uri: the raw request target (path with percent-encoding and query string
            exactly as sent), e.g. "/_matrix/federation/v1/send/1?x=y".
        origin: the sending server's name.
        destination: the receiving server's name.
        content: the parsed JSON body, or None when the request has no body.

    Returns:
        ``{method, uri, origin, destination[, content]}``.

    Raises:
        XMatrixError: method or uri is bytes that are not ASCII/UTF-8.
    """
    try:
        method_s = method.decode("ascii") if isinstance(method, bytes) else method
        uri_s = uri.decode("utf-8") if isinstance(uri, bytes) else uri
    except UnicodeDecodeError:
        raise XMatrixError("Request method or target is not valid text") from None
    obj: dict[str, Any] = {
        "method": method_s,
        "uri": uri_s,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        obj["content"] = content
    return obj


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_authorization_headers(
    signing_key: SigningKey,
    origin: str,
    destination: str,
    method: str | bytes,
    uri: str | bytes,
    content: Any = None,
) -> list[str]:
    """Sign a request and return the Authorization header values to send.

    There is one value per signing key; with one key (matrixfed's case) the list
    has one element. Values look like Synapse's:
    ``X-Matrix origin="o",key="ed25519:k",sig="...",destination="d"``.

    Args:
        signing_key: a signedjson signing key (has ``alg`` and ``version``).
        origin: our server name.
        destination: the server the request goes to (its name, not a
            delegated host).
        method: the HTTP method.
        uri: the request target as it will be sent, query string included.
        content: the JSON body as a Python value, or None for no body.

    Returns:
        The header values.
    """
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, signing_key)
    headers = []
    for key_id, sig in signed["signatures"][origin].items():
        headers.append(
            "X-Matrix "
            + ",".join(
                [
                    f"origin={_quote(origin)}",
                    f"key={_quote(key_id)}",
                    f"sig={_quote(sig)}",
                    f"destination={_quote(destination)}",
                ]
            )
        )
    return headers


def sign_request(
    signing_key: SigningKey,
    origin: str,
    destination: str,
    method: str | bytes,
    uri: str | bytes,
    content: Any = None,
) -> str:
    """Sign a request and return the single Authorization header value.

    See ``build_authorization_headers`` for the arguments.
    """
    return build_authorization_headers(signing_key, origin, destination, method, uri, content)[0]


def verify_request_signature(
    auth: XMatrixAuth,
    verify_key: NaclVerifyKey | VerifyKey,
    *,
    method: str | bytes,
    uri: str | bytes,
    destination: str,
    content: Any = None,
) -> None:
    """Check an X-Matrix signature over a received request.

    Args:
        auth: the parsed header.
        verify_key: the origin's public key for ``auth.key_id``.
        method: the request method as received.
        uri: the raw request target as received.
        destination: our own server name (the caller has already checked that
            ``auth.destination``, if given, names us).
        content: the parsed JSON body, or None when the request had no body.

    Raises:
        XMatrixError: the signature does not verify.
    """
    obj = request_json(method, uri, auth.origin, destination, content)
    obj["signatures"] = {auth.origin: {auth.key_id: auth.signature}}
    alg, _, version = auth.key_id.partition(":")
    # signedjson looks the signature up by the key's alg:version; make the key
    # carry the header's key id without mutating the caller's object.
    key: Any = NaclVerifyKey(bytes(verify_key))
    key.alg = alg
    key.version = version
    try:
        verify_signed_json(obj, auth.origin, key)
    except SignatureVerifyException:
        raise XMatrixError(
            f"Invalid signature for server {auth.origin} with key {auth.key_id}"
        ) from None
