"""Helpers shared by the tests: services set-up, data factories, worker processes, fake turns."""
