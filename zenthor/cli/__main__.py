"""``python -m zenthor.cli`` runs the ``zenthor`` command."""

from zenthor.cli import main

main()
