import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import prometheus_binary  # noqa: E402


@pytest.fixture
def prometheus_required():
    """Integration tests need the real server; in CI its absence is a failure, not a skip."""
    if prometheus_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (scripts/test.sh installs it)")
        pytest.skip("prometheus not installed: run ./scripts/test.sh")
