"""`python -m mfaproxy ...`: the same entry point as the `mfaproxy` command."""

import sys

from mfaproxy.cli.main import main

sys.exit(main())
