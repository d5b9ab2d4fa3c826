"""What an agent stores is what it gets back, on every backend: dicts in their order,
ints of any size, floats to the last bit; what JSON cannot hold is refused with where
it is, and nothing is stored."""

from __future__ import annotations

import asyncio
import math
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import memshift
from memshift import AgentConfig, AgentMemory

BACKENDS = ["sqlite", "postgres", "dual"]


def config_for(backend: str, agents: Path, database: str, name: str = "values") -> AgentConfig:
    return AgentConfig(
        name=name,
        memory_backend=backend,
        database_url=None if backend == "sqlite" else database,
        agents_path=agents,
    )


def with_memory(config: AgentConfig, body: Callable[[AgentMemory], Any]) -> Any:
    async def go() -> Any:
        async with await AgentMemory.open(config) as memory:
            return await body(memory)

    return asyncio.run(go())


def floats() -> list[float]:
    rng = random.Random(20261129)
    special = [
        0.0,
        -0.0,
        0.1,
        0.1 + 0.2,
        1.0,
        -1.5,
        1e300,
        1e-300,
        5e-324,  # the smallest subnormal
        2.2250738585072014e-308,  # the smallest normal
        1.7976931348623157e308,  # the largest
        2.0**53 + 2,
        123456789.123456789,
    ]
    # Any 64-bit pattern that is a finite float.
    drawn = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(400)]
    return special + [x for x in drawn if math.isfinite(x)]


INTS = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**40, -(10**80) + 7]

VALUES: list[Any] = [
    None,
    True,
    False,
    "",
    "plain",
    'quotes " and \\ backslash',
    "controls \n\t\x00\x1f",
    "unicode é ü 中文 🙂",
    [],
    {},
    {"z": 1, "a": 2, "m": 3},  # not sorted: the order must come back
    {"nested": {"deep": [1, [2, [3, {"x": None}]]]}, "empty": {"": []}},
    {"10": "a", "9": "b", "1": "c"},  # numeric-looking keys keep their order too
    INTS,
    [1, 1.0, True],  # an int, a float and a bool stay three different things
    list(range(1000)),
    {"text": "x" * 100_000},
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_come_back_as_they_were_stored(
    backend: str, agents: Path, database: str
) -> None:
    values = VALUES + [floats()]

    async def body(memory: AgentMemory) -> list[Any]:
        for i, value in enumerate(values):
            await memory.store_memory(f"v{i}", value)
        return [await memory.retrieve_memory(f"v{i}") for i in range(len(values))]

    back = with_memory(config_for(backend, agents, database), body)
    for value, got in zip(values, back, strict=True):
        assert got == value
        assert same_shape(got, value), f"{got!r} is not {value!r} in type or order"


def same_shape(got: Any, want: Any) -> bool:
    """Equal, and of the same types all the way down, with dicts in the same order
    (== alone says 1 == 1.0 == True, and ignores dict order)."""
    if isinstance(want, tuple):
        want = list(want)
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        return struct.pack("<d", got) == struct.pack("<d", want)
    if isinstance(want, dict):
        return list(got) == list(want) and all(same_shape(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(same_shape(g, w) for g, w in zip(got, want))
    return bool(got == want)


def test_a_tuple_comes_back_as_a_list(agents: Path, database: str) -> None:
    async def body(memory: AgentMemory) -> Any:
        await memory.store_memory("t", {"pair": (1, "two"), "nested": ((),)})
        return await memory.retrieve_memory("t")

    assert with_memory(config_for("sqlite", agents, database), body) == {
        "pair": [1, "two"],
        "nested": [[]],
    }


def test_postgresql_holds_the_exact_text(agents: Path, database: str, sql: psycopg.Connection) -> None:
    value = {"b": 2**70, "a": 0.1, "c": -0.0}

    async def body(memory: AgentMemory) -> None:
        await memory.store_memory("exact", value)

    with_memory(config_for("postgres", agents, database, name="exact"), body)
    (content,) = sql.execute(
        "select content from agent_memories where key = 'exact'"
    ).fetchone() or (None,)
    assert content == '{"b":1180591620717411303424,"a":0.1,"c":-0.0}'


class Opaque:
    pass


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({1, 2}, "data is of type set"),
        ({"when": __import__("datetime").date(2024, 1, 15)}, "data['when'] is of type date"),
        ({"a": [0, float("nan")]}, "data['a'][1]: NaN is not a JSON number"),
        ({"a": float("inf")}, "data['a']: inf is not a JSON number"),
        ({1: "one"}, "data: the key 1 is of type int"),
        ({"x": {(1, 2): 3}}, "data['x']: the key (1, 2) is of type tuple"),
        ({"bytes": b"\x00"}, "data['bytes'] is of type bytes"),
        ([Opaque()], "data[0] is of type Opaque"),
        ({"s": "\ud800"}, "data['s']: a string holding a lone surrogate"),
    ],
)
def test_what_json_cannot_hold_is_refused_and_nothing_is_stored(
    bad: Any, where: str, agents: Path, database: str
) -> None:
    async def body(memory: AgentMemory) -> Any:
        await memory.store_memory("k", "before")
        with pytest.raises(memshift.InvalidInputError) as refused:
            await memory.store_memory("k", bad)
        assert where in str(refused.value)
        return await memory.retrieve_memory("k")

    assert with_memory(config_for("sqlite", agents, database), body) == "before"


def test_a_value_that_contains_itself_is_refused(agents: Path, database: str) -> None:
    loop: list[Any] = []
    loop.append(loop)
    deep: Any = "bottom"
    for _ in range(200):
        deep = [deep]

    async def body(memory: AgentMemory) -> None:
        for bad in (loop, deep):
            with pytest.raises(memshift.InvalidInputError, match="nested deeper than 128"):
                await memory.store_memory("k", bad)
        assert await memory.retrieve_memory("k") is None
        # 128 levels are fine, and come back.
        ok: Any = 1
        for _ in range(127):
            ok = [ok]
        await memory.store_memory("k", ok)
        assert await memory.retrieve_memory("k") == ok

    with_memory(config_for("sqlite", agents, database), body)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_tools_metrics_and_executions(backend: str, agents: Path, database: str) -> None:
    async def body(memory: AgentMemory) -> None:
        definition = {"type": "function", "params": {"q": "str", "limit": 2**64}}
        tool = await memory.register_tool("search", definition)
        assert (tool.name, tool.definition) == ("search", definition)
        assert list(tool.definition) == ["type", "params"]
        got = await memory.get_tool("search")
        assert got is not None and got.definition == definition and got.id == tool.id
        assert await memory.get_tool("missing") is None
        await memory.register_tool("fetch", {"v": 1})
        assert [t.name for t in await memory.list_tools()] == ["fetch", "search"]
        assert await memory.delete_tool("fetch") is True
        assert await memory.delete_tool("fetch") is False
        assert [t.name for t in await memory.list_tools()] == ["search"]

        await memory.record_metric("latency_ms", 12.5, {"route": "/q"})
        await memory.record_metric("latency_ms", 3)
        metrics = await memory.metrics()
        assert [(m.name, m.value, m.details) for m in metrics] == [
            ("latency_ms", 12.5, {"route": "/q"}),
            ("latency_ms", 3.0, None),
        ]
        await memory.log_execution("ok", {"task": "crawl", "pages": 12})
        await memory.log_execution("failed")
        runs = await memory.executions()
        assert [(e.status, e.details) for e in runs] == [
            ("ok", {"task": "crawl", "pages": 12}),
            ("failed", None),
        ]
        assert runs[0].created_at is not None and runs[0].created_at.tzinfo is not None

    with_memory(config_for(backend, agents, database, name=f"tools_{backend}"), body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_delete_and_search(backend: str, agents: Path, database: str) -> None:
    async def body(memory: AgentMemory) -> None:
        await memory.store_memory("doc:a", {"t": "a"}, embedding=[1.0, 0.0, 0.0])
        await memory.store_memory(
            "doc:b", {"t": "b"}, embedding=[0.0, 1.0, 0.0], metadata={"lang": "en"}
        )
        await memory.store_memory("doc:c", {"t": "c"}, embedding=[0.9, 0.1, 0.0])
        await memory.store_memory("note", "no embedding")
        assert await memory.memory_keys() == ["doc:a", "doc:b", "doc:c", "note"]
        assert await memory.memory_keys(prefix="doc:", limit=2) == ["doc:a", "doc:b"]

        near = await memory.search([1.0, 0.0, 0.0], k=2)
        assert [n.key for n in near] == ["doc:a", "doc:c"]
        assert near[0].distance == pytest.approx(0.0, abs=1e-6)
        assert near[0].content == {"t": "a"}
        assert [n.key for n in await memory.search([1.0, 0.0, 0.0], metadata={"lang": "en"})] == [
            "doc:b"
        ]
        assert [n.key for n in await memory.search([0, 1, 0], k=1, metric="l2", exact=True)] == [
            "doc:b"
        ]
        with pytest.raises(memshift.InvalidInputError, match="unknown metric"):
            await memory.search([1.0, 0.0, 0.0], metric="manhattan")

        record = await memory.get_memory("doc:b")
        assert record is not None
        assert (record.metadata, record.embedding) == ({"lang": "en"}, [0.0, 1.0, 0.0])
        assert record.updated_at >= record.created_at

        assert await memory.delete_memory("note") is True
        assert await memory.delete_memory("note") is False
        assert await memory.retrieve_memory("note") is None
        assert await memory.memory_keys() == ["doc:a", "doc:b", "doc:c"]

    with_memory(config_for(backend, agents, database, name=f"search_{backend}"), body)
