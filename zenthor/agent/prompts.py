"""The system prompt: the operator's text (``AI_SYSTEM_PROMPT``) plus the channel's formatting rules."""

from __future__ import annotations

DEFAULT_SYSTEM_PROMPT = (
    "You are Zenthor, a helpful personal assistant reached through chat. Answer briefly and "
    "clearly, in the language the user writes in. Use the tools you are given when they help; "
    "never invent a tool result. If a tool fails, say so honestly."
)

# What each channel can display. WhatsApp renders *bold*, _italic_, ~strike~ and ```code```,
# but no Markdown headings, tables or links with text.
CHANNEL_FORMATTING = {
    "whatsapp": (
        "Formatting: this chat is WhatsApp. Use plain text with at most *bold* (single asterisks), "
        "_italic_ and simple '-' lists. Never use Markdown headings (#), tables, or [text](url) "
        "links; write URLs in full. Keep messages short."
    ),
    "webhook": "Formatting: plain text; simple Markdown is allowed but avoid tables.",
    "terminal": "Formatting: plain text for a terminal; no Markdown tables.",
}
DEFAULT_FORMATTING = "Formatting: plain text, short paragraphs, no Markdown tables or headings."


def system_prompt(channel: str, configured: str | None = None) -> str:
    """The system message for a conversation on ``channel``."""
    base = (configured or "").strip() or DEFAULT_SYSTEM_PROMPT
    rules = CHANNEL_FORMATTING.get(channel, DEFAULT_FORMATTING)
    return f"{base}\n\n{rules}"
