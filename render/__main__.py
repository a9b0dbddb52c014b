"""``python -m render`` runs the ``phieat-render`` command line (see ``render.cli``)."""

from render.cli import main

raise SystemExit(main())
