"""Zenthor Assist: a crash-safe AI assistant runtime (Dramatiq + RabbitMQ + Postgres)."""

__version__ = "0.1.0"
