"""memshift: one memory API for Python agents over embedded SQLite or PostgreSQL with
pgvector, a dual backend that moves a running agent between them, and the backfill
that moves legacy SQLite files (``python -m memshift.migrate``).

The storage is the memshift Rust library itself; this package calls it.

    import asyncio
    from memshift import AgentConfig, AgentMemory

    async def main():
        config = AgentConfig(name="my_agent", memory_backend="sqlite")
        async with await AgentMemory.open(config) as memory:
            await memory.store_memory("last_query", {"q": "pricing", "n": 3})
            print(await memory.retrieve_memory("last_query"))

    asyncio.run(main())
"""

from __future__ import annotations

from . import _bridge as _bridge  # noqa: F401  (registers the exit barrier)
from . import _native
from .config import BACKENDS, STAGES, AgentConfig
from .errors import (
    ConfigError,
    ConnectionError,
    DatabaseError,
    Error,
    InvalidInputError,
    SchemaError,
)
from .memory import AgentMemory, Execution, MemoryRecord, Metric, Neighbor, Tool
from .mixin import MemoryMixin

__version__: str = _native.__version__


async def migrate_url(url: str) -> list[int]:
    """Applies the shipped PostgreSQL migrations (the contract's tables, pgvector) that
    the database at ``url`` has not had yet, in one transaction, and returns the versions
    applied. Safe to run concurrently and again; the admin application's own Prisma
    migrations may run instead."""
    applied: list[int] = await _native.migrate_url(url)
    return applied


__all__ = [
    "AgentConfig",
    "AgentMemory",
    "BACKENDS",
    "ConfigError",
    "ConnectionError",
    "DatabaseError",
    "Error",
    "Execution",
    "InvalidInputError",
    "MemoryMixin",
    "MemoryRecord",
    "Metric",
    "Neighbor",
    "STAGES",
    "SchemaError",
    "Tool",
    "migrate_url",
]
