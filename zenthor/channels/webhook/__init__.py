"""The webhook channel: signed HTTP in (``zenthor gateway``), signed HTTP callbacks out."""

CHANNEL = "webhook"
