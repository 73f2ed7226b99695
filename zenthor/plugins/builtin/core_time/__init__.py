"""core-time: the current time and date arithmetic in an IANA timezone."""
