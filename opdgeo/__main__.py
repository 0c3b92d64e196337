"""``python -m opdgeo`` runs the command line."""

from opdgeo.cli import main

main()
