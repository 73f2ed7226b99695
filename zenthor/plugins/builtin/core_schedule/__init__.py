"""core-schedule: reminders delivered at their time through the outbox, surviving restarts."""
