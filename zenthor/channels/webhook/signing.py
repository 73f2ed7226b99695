"""The webhook signature: ``X-Zenthor-Signature: sha256=<hex>``, HMAC-SHA256 of the raw body."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Zenthor-Signature"
_PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The header value for ``body`` signed with ``secret``."""
    return _PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time compare)."""
    if not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(header.encode("ascii", "replace"), sign(body, secret).encode("ascii"))
