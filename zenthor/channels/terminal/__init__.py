"""The terminal channel: ``zenthor chat``, a person typing in a terminal."""

CHANNEL = "terminal"
