"""How the library's results reach asyncio (see python/src/bridge.rs)."""

from __future__ import annotations

import asyncio
import atexit
from typing import Any

from . import _native


def settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Run by the event loop: the call's result, unless the future was cancelled."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# Before the interpreter tears itself down, every result being handed over by a
# runtime thread is let through, and no later one comes in.
atexit.register(_native.quiesce, 5.0)
