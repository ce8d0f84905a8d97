"""Shared test configuration.

Hypothesis explores new examples on every local run; under CI (`CI` set, as `.ci/run` is run) it
derandomizes, so a submission's result does not depend on the luck of the draw. A failure found locally
is a real bug either way: hypothesis prints the example to add as a regression.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
