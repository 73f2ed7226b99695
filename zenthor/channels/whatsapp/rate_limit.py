"""The send rate limit of one account: at most N sends a minute per chat and M per account.

WhatsApp bans accounts that send too fast. A sliding one-minute window in the owner's memory,
seeded at takeover from what the account sent in the last minute (so a failover does not reset
it). Nothing is dropped: a limited chat's replies wait, in order, while other chats go on.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

WINDOW_S = 60.0


class SendRateLimit:
    """Sliding-window counters per chat and for the whole account."""

    def __init__(
        self, per_chat: int, per_account: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_chat = per_chat
        self.per_account = per_account
        self._clock = clock
        self._account: deque[float] = deque()
        self._chats: dict[str, deque[float]] = defaultdict(deque)

    def seed(self, recent: Iterable[tuple[str, float]]) -> None:
        """Count sends that happened ``seconds_ago`` (from the outbox) as if made here."""
        now = self._clock()
        for chat_id, seconds_ago in sorted(recent, key=lambda item: -item[1]):
            self.record(chat_id, at=now - seconds_ago)

    def record(self, chat_id: str, *, at: float | None = None) -> None:
        """Count one send to ``chat_id``."""
        moment = self._clock() if at is None else at
        self._account.append(moment)
        self._chats[chat_id].append(moment)

    def _trim(self, now: float) -> None:
        horizon = now - WINDOW_S
        while self._account and self._account[0] <= horizon:
            self._account.popleft()
        for chat_id in list(self._chats):
            window = self._chats[chat_id]
            while window and window[0] <= horizon:
                window.popleft()
            if not window:
                del self._chats[chat_id]

    def account_wait_s(self) -> float:
        """Seconds until the account may send again (0 when it may now)."""
        now = self._clock()
        self._trim(now)
        if len(self._account) < self.per_account:
            return 0.0
        return max(0.0, self._account[0] + WINDOW_S - now)

    def held_chats(self) -> list[str]:
        """Chats that used their minute's sends (their replies wait)."""
        self._trim(self._clock())
        return [chat for chat, window in self._chats.items() if len(window) >= self.per_chat]
