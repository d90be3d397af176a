"""``python -m bench.models``: runs :func:`bench.models.run.main`."""

from bench.models.run import main

main()
