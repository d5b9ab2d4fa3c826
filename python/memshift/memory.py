"""``AgentMemory``: an agent's memory, and the records it returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from . import _native

__all__ = [
    "AgentMemory",
    "MemoryRecord",
    "Neighbor",
    "Tool",
    "Metric",
    "Execution",
]


def _time(text: str) -> datetime:
    # The library writes UTC times as RFC 3339 with a "Z", which fromisoformat reads
    # from Python 3.11 on.
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


@dataclass(frozen=True)
class MemoryRecord:
    """A stored memory with what the library keeps about it."""

    key: str | None
    """The key; ``None`` only for a migrated legacy row whose key another row holds."""
    content: Any
    """The stored value, as it was stored."""
    metadata: dict[str, Any]
    embedding: list[float] | None
    created_at: datetime
    updated_at: datetime
    id: str

    @classmethod
    def _from(cls, raw: Mapping[str, Any]) -> MemoryRecord:
        return cls(
            key=raw["key"],
            content=raw["content"],
            metadata=raw["metadata"],
            embedding=raw.get("embedding"),
            created_at=_time(raw["created_at"]),
            updated_at=_time(raw["updated_at"]),
            id=raw["id"],
        )


@dataclass(frozen=True)
class Neighbor:
    """A memory found by :meth:`AgentMemory.search` and its distance from the query
    (smaller is nearer)."""

    memory: MemoryRecord
    distance: float

    @property
    def key(self) -> str | None:
        return self.memory.key

    @property
    def content(self) -> Any:
        return self.memory.content


@dataclass(frozen=True)
class Tool:
    """A registered tool."""

    name: str
    definition: Any
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    id: str

    @classmethod
    def _from(cls, raw: Mapping[str, Any]) -> Tool:
        return cls(
            name=raw["name"],
            definition=raw["content"],
            metadata=raw["metadata"],
            created_at=_time(raw["created_at"]),
            updated_at=_time(raw["updated_at"]),
            id=raw["id"],
        )


@dataclass(frozen=True)
class Metric:
    """A recorded metric."""

    name: str
    value: float | None
    details: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    id: str = ""

    @classmethod
    def _from(cls, raw: Mapping[str, Any]) -> Metric:
        return cls(
            name=raw["name"],
            value=raw["value"],
            details=raw["content"],
            metadata=raw["metadata"],
            created_at=_time(raw["created_at"]),
            id=raw["id"],
        )


@dataclass(frozen=True)
class Execution:
    """A logged execution."""

    status: str | None
    details: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    id: str = ""

    @classmethod
    def _from(cls, raw: Mapping[str, Any]) -> Execution:
        return cls(
            status=raw["status"],
            details=raw["content"],
            metadata=raw["metadata"],
            created_at=_time(raw["created_at"]),
            id=raw["id"],
        )


class AgentMemory:
    """An agent's memory over the backend its config selects.

    Open it with ``memory = await AgentMemory.open(config)`` (or ``async with await
    AgentMemory.open(config) as memory:``), and close it with ``await memory.close()``.
    Every call is a coroutine run by the library off the event loop, so an agent's
    other tasks keep running; one memory may be used by many tasks at once, and from
    one event loop after another.

    Values are stored as JSON and come back as they went in: dicts keep their order,
    ints of any size stay exact, floats come back bit for bit, and ``None``, bools,
    strings and lists are themselves (a tuple comes back as a list). A value JSON
    cannot hold (a set, a datetime, NaN, a dict with non-str keys) raises
    :class:`memshift.InvalidInputError` naming where it is, and nothing is stored.
    """

    __slots__ = ("_native",)

    def __init__(self, native: _native.Memory) -> None:
        self._native = native

    @classmethod
    async def open(cls, config: Any) -> AgentMemory:
        """Opens the memory of ``config.name`` on the backend ``config`` selects (an
        :class:`memshift.AgentConfig`, or any object with its attributes).

        Raises :class:`memshift.ConfigError` (an unknown backend, PostgreSQL without a
        URL), :class:`memshift.ConnectionError`, :class:`memshift.SchemaError`, or
        :class:`memshift.InvalidInputError` for a name that cannot be an agent's.
        """
        return cls(await _native.open(config))

    @property
    def agent(self) -> str:
        """The agent's name."""
        return self._native.agent

    @property
    def backend(self) -> str:
        """``"sqlite"``, ``"postgres"`` or ``"dual"``."""
        return self._native.backend

    @property
    def closed(self) -> bool:
        return self._native.closed

    # Every call is a coroutine (an `async def`), so asyncio.create_task and
    # asyncio.wait take it like any other.

    async def store_memory(
        self,
        key: str,
        data: Any,
        *,
        embedding: Sequence[float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Stores ``data`` under ``key``, replacing what was there; with ``embedding``
        (for :meth:`search`) and ``metadata`` (a dict of JSON values) if given."""
        if embedding is None and metadata is None:
            return await self._native.store_memory(key, data)
        return await self._native.store_memory(
            key,
            data,
            list(embedding) if embedding is not None else None,
            dict(metadata) if metadata is not None else None,
        )

    async def retrieve_memory(self, key: str) -> Any:
        """The value stored under ``key``, or ``None`` when there is none."""
        return await self._native.retrieve_memory(key)

    async def delete_memory(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when it was there."""
        return await self._native.delete_memory(key)

    async def get_memory(self, key: str) -> MemoryRecord | None:
        """The memory under ``key`` with its metadata, embedding and times."""
        raw = await self._native.get_memory(key)
        return None if raw is None else MemoryRecord._from(raw)

    async def memory_keys(
        self, *, prefix: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The agent's keys in order, those starting with ``prefix`` if given, at most
        ``limit``."""
        return await self._native.memory_keys(prefix, limit)

    async def search(
        self,
        vector: Sequence[float],
        k: int = 10,
        *,
        metric: str = "cosine",
        key_prefix: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> list[Neighbor]:
        """The ``k`` memories nearest to ``vector`` (pgvector in PostgreSQL, an exact
        search in SQLite), nearest first: by ``metric`` (``"cosine"``, ``"l2"`` or
        ``"inner_product"``), only keys starting with ``key_prefix``, only memories
        whose metadata has each field of ``metadata`` with that value. ``exact`` skips
        PostgreSQL's index and compares with every memory."""
        raw = await self._native.search(
            list(vector),
            k,
            metric,
            key_prefix,
            dict(metadata) if metadata is not None else None,
            exact,
        )
        return [
            Neighbor(memory=MemoryRecord._from(n["memory"]), distance=n["distance"])
            for n in raw
        ]

    async def register_tool(self, name: str, definition: Any) -> Tool:
        """Registers (or replaces) the tool ``name``."""
        return Tool._from(await self._native.register_tool(name, definition))

    async def get_tool(self, name: str) -> Tool | None:
        """The tool registered as ``name``, or ``None``."""
        raw = await self._native.get_tool(name)
        return None if raw is None else Tool._from(raw)

    async def list_tools(
        self, *, prefix: str | None = None, limit: int | None = None
    ) -> list[Tool]:
        """The agent's tools by name."""
        return [Tool._from(t) for t in await self._native.list_tools(prefix, limit)]

    async def delete_tool(self, name: str) -> bool:
        """Deletes the tool ``name``; ``True`` when it was there."""
        return await self._native.delete_tool(name)

    async def record_metric(self, name: str, value: float, details: Any = None) -> None:
        """Records one value of the metric ``name``, with optional ``details``."""
        return await self._native.record_metric(name, float(value), details)

    async def metrics(self, *, limit: int | None = None) -> list[Metric]:
        """The agent's recorded metrics, oldest first."""
        return [Metric._from(m) for m in await self._native.metrics(limit)]

    async def log_execution(self, status: str, details: Any = None) -> None:
        """Logs one execution with its ``status`` and optional ``details``."""
        return await self._native.log_execution(status, details)

    async def executions(self, *, limit: int | None = None) -> list[Execution]:
        """The agent's logged executions, oldest first."""
        return [Execution._from(e) for e in await self._native.executions(limit)]

    # The dual backend.

    @property
    def stage(self) -> str:
        """The agent's stage in the dual backend (``memshift.STAGES``): the one held
        centrally in PostgreSQL (``memctl stage set``) when there is one;
        :class:`InvalidInputError` on another backend."""
        return self._native.stage

    def set_stage(self, stage: str) -> None:
        """Moves the agent to ``stage`` in this process, forward or back; calls already
        running finish by the stage they started in. A stage held centrally for the
        agent (``memctl stage set``) wins over this."""
        self._native.set_stage(stage)

    async def repair(self, *, retry_parked: bool = False) -> dict[str, int]:
        """Replays the writes one side missed (journaled while it was down), returning
        ``{"to_postgres": n, "to_sqlite": n, "parked": n}``. ``retry_parked`` also
        retries writes parked because a side refused them."""
        result: dict[str, int] = await self._native.repair(retry_parked)
        return result

    async def stats(self) -> dict[str, Any]:
        """The dual backend's counters and latency percentiles since it was opened, and
        the owed writes pending (``owed_pending``; ``None`` while a side is down and its
        journal cannot be counted)."""
        result: dict[str, Any] = await self._native.stats()
        return result

    async def flush(self) -> None:
        """Finishes background bookkeeping now; nothing stored is lost without it."""
        return await self._native.flush()

    async def close(self) -> None:
        """Flushes and closes the connections. Later calls raise
        :class:`InvalidInputError`; closing again does nothing."""
        return await self._native.close()

    async def __aenter__(self) -> AgentMemory:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return repr(self._native)
