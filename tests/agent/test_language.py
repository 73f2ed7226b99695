"""The pieces of the approval question that need no database: the language guess, dates as a
person reads them, and how long the question is open (issue 11 item 5)."""

from __future__ import annotations

import pytest

from zenthor.agent.approval_question import approval_question, render_datetime
from zenthor.agent.language import guess_language
from zenthor.plugins.tools import ToolDescription


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("remind me to call mom at 5", "en"),
        ("Please remind me tomorrow", "en"),
        ("What time is it?", "en"),
        ("me lembra de ligar pra mãe às 5", "pt"),
        ("Me lembra amanhã, por favor", "pt"),
        ("me lembra de ligar pra mae amanha", "pt"),  # chat spelling, no accents
        ("Que horas são?", "pt"),
        ("NÃO", "pt"),
        ("obrigado!", "pt"),
        # nothing to tell by: the caller's default applies
        ("ok", None),
        ("17h", None),
        ("👍", None),
        ("", None),
        (None, None),
    ],
)
def test_guess_language(text, expected):
    assert guess_language(text) == expected


@pytest.mark.parametrize(
    ("value", "language", "expected"),
    [
        ("2026-03-14T17:00", "en", "Sat 14 Mar 2026, 17:00"),
        ("2026-03-14T17:00", "pt", "sáb 14/03/2026 às 17:00"),
        ("2026-03-14T17:00:59", "en", "Sat 14 Mar 2026, 17:00"),
        ("2026-03-14 09:05", "pt", "sáb 14/03/2026 às 09:05"),
        ("2026-03-15", "en", "Sun 15 Mar 2026"),
        ("2026-03-16", "pt", "seg 16/03/2026"),
        ("2026-03-14T17:00Z", "en", "Sat 14 Mar 2026, 17:00 UTC"),
        ("2026-03-14T17:00+01:00", "en", "Sat 14 Mar 2026, 17:00 UTC+01:00"),
        ("2026-03-14T17:00-03:00", "pt", "sáb 14/03/2026 às 17:00 UTC-03:00"),
        ("2026-02-30T10:00", "en", None),  # shaped like a date, not one
        ("tomorrow at 5", "en", None),
        ("17:00", "en", None),
    ],
)
def test_render_datetime(value, language, expected):
    assert render_datetime(value, language) == expected


REMIND = ToolDescription(
    title="Set a reminder",
    summary={
        "en": 'Set a reminder "{text}" for {when:datetime}',
        "pt": 'Criar o lembrete "{text}" para {when:datetime}',
    },
    plugin_name="Reminders",
    tool_name="remind",
)


@pytest.mark.parametrize(
    ("seconds", "language", "shown"),
    [
        (600, "en", "(valid for 10 minutes)"),
        (600, "pt", "(vale por 10 minutos)"),
        (60, "en", "(valid for 1 minute)"),
        (3600, "pt", "(vale por 1 hora)"),
        (7200, "en", "(valid for 2 hours)"),
        (45, "pt", "(vale por 45 segundos)"),
    ],
)
def test_the_question_says_how_long_it_is_open(seconds, language, shown):
    question = approval_question(
        "core_schedule_remind",
        {"when": "2026-03-14T17:00", "text": "call mom"},
        description=REMIND,
        language=language,
        valid_for_s=seconds,
    )
    assert f"? {shown} " in question


def test_a_summary_renders_safely():
    """A missing optional argument is nothing, text is cut at 120 characters, a template in the
    user's language is preferred, an unknown language falls back to English, and a template that
    cannot be rendered gives the title and arguments instead."""
    long_text = "a" * 300
    question = approval_question(
        "core_schedule_remind", {"text": long_text}, description=REMIND, language="pt"
    )
    assert (
        question == f'Criar o lembrete "{"a" * 119}…" para? Responda SIM para confirmar ou NÃO para cancelar.'
    )
    english_only = ToolDescription("Echo", {"en": "Echo {text}"}, "Demo", "echo")
    assert approval_question("demo_echo", {"text": "hi"}, description=english_only, language="pt").startswith(
        "Echo hi? Responda SIM"
    )
    assert approval_question("demo_echo", {"text": "hi"}, description=english_only, language="xx").startswith(
        "Echo hi? Reply YES"
    )
    broken = ToolDescription(None, {"en": "Echo {text"}, "Demo", "echo_it")
    assert approval_question("demo_echo_it", {"text": "hi"}, description=broken) == (
        'I\'d like to use "Demo: echo it" with text: "hi". Reply YES to go ahead or NO to cancel.'
    )
    # Braces in an argument are text, not a template.
    assert approval_question("demo_echo", {"text": "{when}"}, description=english_only).startswith(
        "Echo {when}?"
    )
