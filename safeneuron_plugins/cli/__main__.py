"""`python -m safeneuron_plugins.cli`."""

import sys

from . import main

sys.exit(main())
