"""``python -m picolm_server``: the same as the ``picolm-server`` command."""

import sys

from .cli import main

sys.exit(main())
