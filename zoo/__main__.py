"""``python -m zoo``: see :mod:`zoo.run`."""

from zoo.run import main

main()
