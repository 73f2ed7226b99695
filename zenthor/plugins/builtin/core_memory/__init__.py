"""core-memory: notes remembered per contact, stored in Postgres."""
