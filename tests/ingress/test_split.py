"""Splitting long replies on paragraph, line and sentence boundaries, never inside a character."""

from __future__ import annotations

import pytest

from zenthor.agent.replies import register_text_limit, split_text, text_limit


def test_short_text_is_one_part():
    assert split_text("short", 100) == ["short"]
    assert split_text("anything" * 1000, None) == ["anything" * 1000]


def test_splits_on_sentence_boundaries():
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    parts = split_text(text, 32)
    assert "".join(parts) == text
    assert parts == ["One two three. Four five six! ", "Seven eight nine? ", "Ten eleven twelve."]


def test_prefers_a_line_break_over_a_sentence_end():
    text = "Intro line\nA sentence. Another sentence here."
    parts = split_text(text, 30)
    assert parts[0] == "Intro line\n" or parts[0].endswith(". ")
    assert "".join(parts) == text and all(len(p) <= 30 for p in parts)


def test_prefers_paragraphs():
    text = "a" * 40 + "\n\n" + "b" * 40
    assert split_text(text, 60) == ["a" * 40 + "\n\n", "b" * 40]


def test_falls_back_to_spaces_then_hard_cut():
    assert split_text("word " * 10, 12) == [
        "word word ",
        "word word ",
        "word word ",
        "word word ",
        "word word ",
    ]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


@pytest.mark.parametrize(
    "unit",
    ["e\u0301", "👍🏽", "👩\u200d👩\u200d👧", "\u2764\ufe0f", "\u0915\u094d\u0937"],
)
def test_hard_cut_never_splits_a_character_from_its_marks(unit):
    text = unit * 40
    for limit in range(16, 40):
        parts = split_text(text, limit)
        assert "".join(parts) == text
        for part in parts:
            assert len(part) <= limit
            assert part.startswith(unit[0]), (limit, part[:3])


def test_every_part_fits_and_nothing_is_lost_on_a_realistic_reply():
    text = ("Here is a paragraph with several sentences. It goes on! Does it end? Yes.\n" * 200).strip()
    parts = split_text(text, 4000)
    assert "".join(parts) == text
    assert all(len(p) <= 4000 for p in parts) and len(parts) == 4
    assert all(p.endswith("\n") for p in parts[:-1])


def test_channel_limits():
    assert text_limit("webhook") == 4000 and text_limit("terminal") is None
    register_text_limit("test-channel", 100)
    assert text_limit("test-channel") == 100
    with pytest.raises(ValueError, match="at least 16"):
        register_text_limit("test-channel", 3)
