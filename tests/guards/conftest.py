"""Guards built from default settings; cheap to build, so each test gets its own."""

from __future__ import annotations

import pytest

from agent.config import GuardSettings
from agent.guards import Guards


@pytest.fixture
def guards() -> Guards:
    return Guards(GuardSettings(), approval_tools=["write_file"])
