"""``python -m dynasor_graph`` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
