"""Webhook signatures in both directions: Standard Webhooks (https://www.standardwebhooks.com).

Three headers: ``webhook-id`` (the delivery id, kept by a retry), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature``, a space-separated list of ``v1,<base64 HMAC-SHA256>`` of
``"{id}.{timestamp}.{body}"``; any one valid signature verifies, so a sender can sign with an old
and a new secret during a rotation. Signing is the ``standardwebhooks`` package's; the checks
around it are here, because they must try several secrets, use ``WEBHOOK_TOLERANCE_S`` and say
which check failed.

Secrets are ``whsec_<base64>`` (:func:`new_secret`); any other string is used as its UTF-8 bytes,
so a ``WEBHOOK_SECRET`` from before Standard Webhooks keeps working. The legacy scheme
(``X-Zenthor-Signature: sha256=<hex>`` of the body alone) is kept only for a migration.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
STANDARD_HEADERS = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
LEGACY_SIGNATURE_HEADER = "X-Zenthor-Signature"
SECRET_PREFIX = "whsec_"
_LEGACY_PREFIX = "sha256="
MAX_ID_LENGTH = 256

# The checks a request can fail, named in the 401 body (``check``).
MISSING_HEADER = "missing_header"
INVALID_HEADER = "invalid_header"
TIMESTAMP_OUTSIDE_TOLERANCE = "timestamp_outside_tolerance"
NO_MATCHING_SIGNATURE = "no_matching_signature"
LEGACY_REFUSED = "legacy_signature_refused"


class SignatureError(ValueError):
    """A request that does not verify: ``check`` names the failed check; the message says what is
    wrong without any secret or expected value."""

    def __init__(self, check: str, message: str, *, header: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.header = header


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: the decoded base64 of a ``whsec_`` secret, else its UTF-8 bytes.

    Raises :class:`ValueError` for a ``whsec_`` secret that is not base64 or is empty.
    """
    if not secret.startswith(SECRET_PREFIX):
        if not secret:
            raise ValueError("the secret is empty")
        return secret.encode("utf-8")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("the secret is empty after whsec_")
    return key


def new_secret() -> str:
    """A new secret in the spec's form: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(32)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` for ``msg_id`` at ``timestamp`` (Unix seconds)."""
    return Webhook(secret_key(secret)).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)


def sign_headers(
    secrets: str | Iterable[str], body: bytes, *, msg_id: str, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed with each of ``secrets``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(stamp),
        SIGNATURE_HEADER: " ".join(sign(secret, msg_id, stamp, body) for secret in keys),
    }


def has_standard_headers(headers: Mapping[str, str]) -> bool:
    """True when any Standard Webhooks header is present: then that scheme decides."""
    return any(name in headers for name in STANDARD_HEADERS)


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Iterable[str],
    *,
    tolerance_s: int,
    now: float | None = None,
) -> str:
    """The ``webhook-id`` of a request whose signature verifies with any of ``secrets``.

    ``headers`` is looked up by lower-case name (Starlette's headers are case-insensitive).
    Raises :class:`SignatureError` naming the first failed check: a missing header, an id too long
    or not printable ASCII, or a timestamp that is not Unix seconds (``invalid_header``), a
    timestamp more than ``tolerance_s`` away from now, no matching signature.
    """
    values = {}
    for name in STANDARD_HEADERS:
        value = (headers.get(name) or "").strip()
        if not value:
            raise SignatureError(
                MISSING_HEADER,
                f"missing header {name}: sign requests with Standard Webhooks "
                f"({', '.join(STANDARD_HEADERS)})",
                header=name,
            )
        values[name] = value
    msg_id, raw_stamp = values[ID_HEADER], values[TIMESTAMP_HEADER]
    if len(msg_id) > MAX_ID_LENGTH:
        raise SignatureError(
            INVALID_HEADER, f"{ID_HEADER} is longer than {MAX_ID_LENGTH} characters", header=ID_HEADER
        )
    if not msg_id.isascii() or not msg_id.isprintable():
        # HTTP carries header bytes, and libraries disagree on how non-ASCII ones become text
        # (we read latin-1, most senders write UTF-8): such an id would sign different bytes.
        raise SignatureError(INVALID_HEADER, f"{ID_HEADER} must be printable ASCII", header=ID_HEADER)
    if not raw_stamp.isascii() or not raw_stamp.isdigit() or len(raw_stamp) > 12:
        raise SignatureError(
            INVALID_HEADER, f"{TIMESTAMP_HEADER} must be Unix seconds (an integer)", header=TIMESTAMP_HEADER
        )
    stamp = int(raw_stamp)
    skew = (time.time() if now is None else now) - stamp
    if abs(skew) > tolerance_s:
        when = f"{int(skew)} s old" if skew > 0 else f"{int(-skew)} s in the future"
        raise SignatureError(
            TIMESTAMP_OUTSIDE_TOLERANCE,
            f"{TIMESTAMP_HEADER} is outside the tolerance of {tolerance_s} s (the request is {when}); "
            "sign each attempt with the current time",
            header=TIMESTAMP_HEADER,
        )
    offered = [part.encode("utf-8", "replace") for part in values[SIGNATURE_HEADER].split(" ") if part]
    for secret in secrets:
        expected = sign(secret, msg_id, stamp, body).encode("ascii")
        # Every offered signature is compared (constant time each), whichever matches.
        if any([hmac.compare_digest(expected, candidate) for candidate in offered]):
            return msg_id
    raise SignatureError(
        NO_MATCHING_SIGNATURE,
        f"no matching signature: no v1 signature in {SIGNATURE_HEADER} matches this account's "
        f"secret over {ID_HEADER}.{TIMESTAMP_HEADER}.body",
        header=SIGNATURE_HEADER,
    )


def legacy_sign(body: bytes, secret: str) -> str:
    """The legacy ``X-Zenthor-Signature`` value: ``sha256=<hex>`` of the body alone (migration only)."""
    return _LEGACY_PREFIX + hmac.new(secret_key(secret), body, hashlib.sha256).hexdigest()


def legacy_verify(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """True when ``header`` is the legacy signature of ``body`` with any of ``secrets``."""
    if not header or not header.startswith(_LEGACY_PREFIX):
        return False
    given = header.encode("ascii", "replace")
    return any([hmac.compare_digest(given, legacy_sign(body, secret).encode("ascii")) for secret in secrets])
