"""`python -m safeneuron_plugins.cli`."""

import sys

from .parser import main

sys.exit(main())
