"""Who may talk to the assistant on each channel: ``open``, ``allowlist`` or ``disabled``.

The policy of a channel comes from the settings (``<CHANNEL>_CONTACT_POLICY`` and
``<CHANNEL>_ALLOW_FROM``, a comma-separated list of sender ids); a channel without settings (the
terminal: the person at the keyboard runs the process) is open. A contact whose ``allowed``
column an operator set to true is allowed under ``allowlist`` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from zenthor.settings import Settings


@dataclass(frozen=True)
class ContactPolicy:
    """A channel's policy and its allowlist."""

    mode: str  # open | allowlist | disabled
    allow_from: frozenset[str]

    def allows(self, sender_id: str, *, already_allowed: bool) -> bool:
        """True when ``sender_id`` may start turns."""
        if self.mode == "open":
            return True
        if self.mode == "disabled":
            return False
        return already_allowed or sender_id in self.allow_from or _number(sender_id) in self._numbers

    @property
    def _numbers(self) -> frozenset[str]:
        return frozenset(_number(entry) for entry in self.allow_from)


def _number(identity: str) -> str:
    """A phone number's digits, so an allowlist entry ``+55 11 98765-4321`` matches the WhatsApp
    JID ``5511987654321@s.whatsapp.net``; any other id is returned unchanged (exact match only)."""
    user, _, server = identity.partition("@")
    if server == "lid":
        return identity  # a LID's digits are not a phone number
    digits = "".join(ch for ch in user if ch not in "+ -().")
    return digits if digits.isdigit() else identity


def policy_for(channel: str, settings: Settings) -> ContactPolicy:
    """The contact policy of ``channel`` from the settings."""
    prefix = channel.upper()
    fields = type(settings).model_fields
    mode_name, allow_name = f"{prefix}_CONTACT_POLICY", f"{prefix}_ALLOW_FROM"
    mode = getattr(settings, mode_name) if mode_name in fields else "open"
    allow = (getattr(settings, allow_name) if allow_name in fields else "") or ""
    return ContactPolicy(mode, frozenset(part.strip() for part in allow.split(",") if part.strip()))
