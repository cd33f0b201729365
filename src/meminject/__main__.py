"""``python -m meminject`` = the ``meminject`` command."""

import sys

from .cli import main

sys.exit(main())
