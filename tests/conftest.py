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


# ------------------------------------------------------------------------------ system programs

import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def system_program():
    """`system_program(name, package)`: the path of a system program a test runs for real (Prometheus,
    Alertmanager, Chromium: Debian packages). Where it is absent the test skips, saying which package to
    install; under CI (`PPO_TELEMETRY_CI` set by `.ci/run`, which installs them) it fails instead, so
    that none of these tests is skipped in CI."""

    def find(name: str, package: str) -> str:
        path = shutil.which(name)
        if path is not None:
            return path
        if os.environ.get("PPO_TELEMETRY_CI"):
            pytest.fail(f"{name} is missing (Debian package {package}); .ci/run installs it")
        pytest.skip(f"needs {name}: apt-get install {package}")

    return find
