"""Dramatiq middleware of our own, one per module (heartbeat, database connections)."""
