"""Webhook secrets at rest: encrypted with Fernet (``cryptography``) under ``ZENTHOR_SECRET_KEY``.

The Fernet key is derived from the setting with HKDF-SHA256, so any long random string serves
(``python -c 'import secrets; print(secrets.token_urlsafe(32))'``). A database dump alone
reveals no secret; the key lives only in the environment of the processes that need it.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zenthor.settings import Settings, get_settings

_INFO = b"zenthor webhook account secrets v1"


class SecretKeyError(RuntimeError):
    """``ZENTHOR_SECRET_KEY`` is missing or does not decrypt a stored secret."""


def _fernet(settings: Settings) -> Fernet:
    if not settings.ZENTHOR_SECRET_KEY:
        raise SecretKeyError(
            "missing setting ZENTHOR_SECRET_KEY: webhook account secrets are stored encrypted with it "
            "(set the same value for the gateway, the workers and `zenthor webhook`)"
        )
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        settings.ZENTHOR_SECRET_KEY.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(secret: str, settings: Settings | None = None) -> str:
    """The Fernet token of ``secret`` (text, safe to store)."""
    return _fernet(settings or get_settings()).encrypt(secret.encode("utf-8")).decode("ascii")


def decrypt(token: str, settings: Settings | None = None, *, account_id: str = "?") -> str:
    """The secret in ``token``; :class:`SecretKeyError` when the key is missing or another one."""
    try:
        return _fernet(settings or get_settings()).decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise SecretKeyError(
            f"ZENTHOR_SECRET_KEY does not decrypt the secrets of webhook account {account_id[:128]!r}: "
            "was the key changed? Set the key they were stored with, or rotate the account's secret with --keep-old-for 0"
        ) from None
