"""Built-in plugins: core-time, core-memory, core-schedule (each a directory with zenthor-plugin.json)."""
