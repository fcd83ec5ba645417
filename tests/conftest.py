import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import require_tool  # noqa: E402


@pytest.fixture
def prometheus_required():
    """Integration tests need the real server; in CI its absence is a failure, not a skip."""
    require_tool("prometheus", "prometheus")
