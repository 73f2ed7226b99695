"""A guess at the language of a user's message, English or Portuguese, from marker words.

The approval question is asked in the user's language when their message tells it. No model
call and no dependency: each language has a short list of words (and a few two-word phrases)
that are common in it and rare in the other; the language with more of them in the message
wins. A short or mixed message ("ok", "17:00?") may tell nothing: then the caller's
default applies (``APPROVAL_DEFAULT_LANGUAGE``).
"""

from __future__ import annotations

import re
import unicodedata

# Lower case, accents kept: "às" is Portuguese, "as" is not a marker at all. Common unaccented
# chat spellings ("nao", "voce", "amanha") count too.
_MARKERS: dict[str, frozenset[str]] = {
    "pt": frozenset(
        {
            "não", "nao", "você", "voce", "vc", "pra", "para", "lembra", "lembre", "lembrar", "lembrete",
            "amanhã", "amanha", "hoje", "às", "uma", "um", "obrigado", "obrigada", "por favor", "de",
            "do", "da", "com", "que", "meu", "minha", "eu", "está", "tá", "sim", "olá", "oi", "tudo",
            "bem", "ligar", "mãe", "pai", "hora", "horas", "depois", "agora",
        }
    ),
    "en": frozenset(
        {
            "the", "remind", "please", "tomorrow", "today", "what", "you", "and", "my", "is", "to",
            "at", "of", "for", "it", "hi", "hello", "thanks", "thank you", "yes", "can", "will",
            "call", "mom", "dad", "tonight", "morning", "now", "with", "this", "that",
        }
    ),
}  # fmt: skip
_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    """The message's words, lower case, in composed form (so "ã" typed either way matches)."""
    return _WORD.findall(unicodedata.normalize("NFC", text).casefold())


def _score(words: list[str], markers: frozenset[str]) -> int:
    """How many words (and adjacent word pairs, for "por favor") are markers."""
    singles = sum(1 for word in words if word in markers)
    pairs = sum(1 for first, second in zip(words, words[1:], strict=False) if f"{first} {second}" in markers)
    return singles + pairs


def guess_language(text: str | None) -> str | None:
    """``"en"`` or ``"pt"`` when ``text`` has more marker words of one than of the other; None
    when it tells nothing (no markers, a tie, no text)."""
    if not text:
        return None
    words = _words(text)
    scores = {language: _score(words, markers) for language, markers in _MARKERS.items()}
    best = max(scores, key=lambda language: scores[language])
    if scores[best] == 0 or list(scores.values()).count(scores[best]) > 1:
        return None
    return best
