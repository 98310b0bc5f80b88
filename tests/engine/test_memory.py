"""The trainer's allocator setting: glibc keeps freed blocks for the next step."""
import sys

import pytest

from detseg.engine.memory import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_glibc_takes_the_thresholds():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # once per process, then cached
