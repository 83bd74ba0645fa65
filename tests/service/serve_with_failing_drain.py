"""`seqserve serve` with a fault injected in-process: `ModelRegistry.drain` raises.

Run as `python -m tests.service.serve_with_failing_drain <serve flags>` by tests/service/test_runner.py;
the server's own code runs unchanged.
"""

from __future__ import annotations

import sys

from service.__main__ import main
from service.registry import ModelRegistry

FAULT = "injected drain fault"


async def _failing_drain(self: ModelRegistry) -> bool:
    raise RuntimeError(FAULT)


if __name__ == "__main__":
    ModelRegistry.drain = _failing_drain  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
