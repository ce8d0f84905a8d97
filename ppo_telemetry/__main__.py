"""`python -m ppo_telemetry` runs the command line."""

import sys

from .cli import main

sys.exit(main())
