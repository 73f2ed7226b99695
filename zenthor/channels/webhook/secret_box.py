"""Webhook secrets at rest: encrypted with Fernet (``cryptography``) under ``ZENTHOR_SECRET_KEY``.

The Fernet key is derived from the setting with HKDF-SHA256, so any long random string serves
(``python -c 'import secrets; print(secrets.token_urlsafe(32))'``). A database dump alone
reveals no secret; the key lives only in the environment of the processes that need it.

Changing the key: set the new one as ``ZENTHOR_SECRET_KEY`` and the old one as
``ZENTHOR_SECRET_KEY_PREVIOUS`` (a ``MultiFernet``: reads try both, writes use the new one), run
``zenthor webhook reencrypt``, then drop the previous key.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zenthor.settings import Settings, get_settings

_INFO = b"zenthor webhook account secrets v1"


class SecretKeyError(RuntimeError):
    """``ZENTHOR_SECRET_KEY`` is missing or does not decrypt a stored secret."""


def _derive(key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(derived))


def _fernet(settings: Settings) -> MultiFernet:
    """The current key first (it encrypts), then ``ZENTHOR_SECRET_KEY_PREVIOUS`` (read only)."""
    if not settings.ZENTHOR_SECRET_KEY:
        raise SecretKeyError(
            "missing setting ZENTHOR_SECRET_KEY: webhook account secrets are stored encrypted with it "
            "(set the same value for the gateway, the workers and `zenthor webhook`)"
        )
    keys = [settings.ZENTHOR_SECRET_KEY]
    if settings.ZENTHOR_SECRET_KEY_PREVIOUS:
        keys.append(settings.ZENTHOR_SECRET_KEY_PREVIOUS)
    return MultiFernet([_derive(key) for key in keys])


def encrypt(secret: str, settings: Settings | None = None) -> str:
    """The Fernet token of ``secret`` under ``ZENTHOR_SECRET_KEY`` (text, safe to store)."""
    return _fernet(settings or get_settings()).encrypt(secret.encode("utf-8")).decode("ascii")


def decrypt(token: str, settings: Settings | None = None, *, account_id: str = "?") -> str:
    """The secret in ``token`` (under the current or the previous key); :class:`SecretKeyError`
    when the key is missing or neither key is the one it was stored with."""
    try:
        return _fernet(settings or get_settings()).decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise _wrong_key(account_id) from None


def reencrypt(token: str, settings: Settings | None = None, *, account_id: str = "?") -> str:
    """``token`` encrypted again under the current ``ZENTHOR_SECRET_KEY`` (readable with either key)."""
    try:
        return _fernet(settings or get_settings()).rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise _wrong_key(account_id) from None


def _wrong_key(account_id: str) -> SecretKeyError:
    return SecretKeyError(
        f"ZENTHOR_SECRET_KEY does not decrypt the secrets of webhook account {account_id[:128]!r}: "
        "was the key changed? Set the key they were stored with (or the new key with the old one as "
        "ZENTHOR_SECRET_KEY_PREVIOUS, then `zenthor webhook reencrypt`)"
    )
