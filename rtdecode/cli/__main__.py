"""``python -m rtdecode.cli``: the rtdecode command (the demo, tests and launchers start it so)."""

import sys

from rtdecode.cli import main

sys.exit(main())
