"""``python -m pipeline.claims check reports/<run>/claims.json`` (see ``cli``)."""
import sys

from .cli import main

sys.exit(main())
