"""The dual backend from Python: every write reaches both SQLite and PostgreSQL, the
stages step forward and back without losing a key, stats() and repair() say what the
backend did, and a write made while PostgreSQL is down reaches it after repair()."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

import memshift
from memshift import STAGES, AgentConfig, AgentMemory

REPO = Path(__file__).resolve().parents[2]
PG = REPO / "scripts" / "pg"

# The side each stage holds as the truth (docs/dual.md); a step that changes it is made
# after repair(), as the walk there says.
AUTHORITATIVE = {
    "sqlite": "sqlite",
    "dualwrite": "sqlite",
    "shadow": "sqlite",
    "live": "postgres",
    "rampdown": "postgres",
    "postgres": "postgres",
}

STATS_KEYS = {
    "stage",
    "sqlite",
    "postgres",
    "fallback_hits",
    "fallback_on_error",
    "lazy_copies",
    "shadow_compares",
    "shadow_mismatches",
    "owed_recorded",
    "owed_replayed",
    "owed_parked",
    "owed_pending",
}
SIDE_KEYS = {"reads", "errors", "read_latency", "write_latency"}
LATENCY_KEYS = {"count", "p50_us", "p90_us", "p99_us"}
REPAIR_KEYS = {"to_postgres", "to_sqlite", "parked"}


def dual(name: str, url: str, agents: Path, stage: str = "dualwrite", **more: Any) -> AgentConfig:
    return AgentConfig(
        name=name,
        memory_backend="dual",
        database_url=url,
        agents_path=str(agents),
        memory_stage=stage,
        **more,
    )


def sqlite_rows(agents: Path, agent: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of the agent's own SQLite file (`agents/<agent>/memory.db`), read-only."""
    path = agents / agent / "memory.db"
    assert path.is_file(), f"no SQLite file at {path}"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(query).fetchall()


def sqlite_memories(agents: Path, agent: str) -> dict[str, Any]:
    rows = sqlite_rows(agents, agent, "select key, content from agent_memories")
    return {key: json.loads(content) for key, content in rows}


def pg_rows(conn: psycopg.Connection, agent: str, table: str, columns: str) -> list[tuple[Any, ...]]:
    """Rows of one contract table in PostgreSQL that belong to `agent` (by its name)."""
    return conn.execute(
        f"select {columns} from {table} t join agents a on a.id = t.agent_id where a.name = %s",
        (agent,),
    ).fetchall()


def pg_memories(conn: psycopg.Connection, agent: str) -> dict[str, Any]:
    rows = pg_rows(conn, agent, "agent_memories", "t.key, t.content")
    return {key: json.loads(content) for key, content in rows}


def test_dualwrite_writes_land_in_the_sqlite_file_and_in_postgres(
    database: str, agents: Path, sql: psycopg.Connection
) -> None:
    async def work() -> tuple[Any, Any]:
        async with await AgentMemory.open(dual("crawler", database, agents)) as memory:
            assert memory.backend == "dual"
            assert memory.stage == "dualwrite"
            await memory.store_memory("last_query", {"q": "pricing", "n": 3}, metadata={"from": "test"})
            await memory.store_memory("scratch", [1, 2, 3])
            assert await memory.delete_memory("scratch")
            await memory.register_tool("search", {"endpoint": "/search", "timeout": 5})
            await memory.record_metric("latency_ms", 12.5, {"route": "/"})
            await memory.log_execution("completed", {"task": "crawl", "pages": 40})
            return await memory.retrieve_memory("last_query"), await memory.retrieve_memory("scratch")

    value, deleted = asyncio.run(work())
    assert value == {"q": "pricing", "n": 3}
    assert deleted is None

    # SQLite, the authoritative side in dualwrite: the agent's own file.
    assert sqlite_memories(agents, "crawler") == {"last_query": {"q": "pricing", "n": 3}}
    lite_meta = sqlite_rows(agents, "crawler", "select metadata from agent_memories")
    assert json.loads(lite_meta[0][0])["from"] == "test"
    tools = sqlite_rows(agents, "crawler", "select name, content from agent_tools")
    assert [(n, json.loads(c)) for n, c in tools] == [("search", {"endpoint": "/search", "timeout": 5})]
    assert sqlite_rows(agents, "crawler", "select name, value from agent_metrics") == [("latency_ms", 12.5)]
    assert sqlite_rows(agents, "crawler", "select status from agent_executions") == [("completed",)]

    # PostgreSQL: the same rows, under the same ids.
    assert pg_memories(sql, "crawler") == {"last_query": {"q": "pricing", "n": 3}}
    pg_tools = pg_rows(sql, "crawler", "agent_tools", "t.name, t.content")
    assert [(n, json.loads(c)) for n, c in pg_tools] == [("search", {"endpoint": "/search", "timeout": 5})]
    assert pg_rows(sql, "crawler", "agent_metrics", "t.name, t.value") == [("latency_ms", 12.5)]
    assert pg_rows(sql, "crawler", "agent_executions", "t.status") == [("completed",)]
    for table in ("agent_memories", "agent_tools", "agent_metrics", "agent_executions"):
        lite_ids = {str(i) for (i,) in sqlite_rows(agents, "crawler", f"select id from {table}")}
        pg_ids = {str(i) for (i,) in pg_rows(sql, "crawler", table, "t.id")}
        assert lite_ids == pg_ids, table


def test_every_stage_forward_and_back_keeps_every_key(
    database: str, agents: Path, sql: psycopg.Connection
) -> None:
    walk = [*STAGES, *reversed(STAGES[:-1])]
    assert walk[0] == "sqlite" and walk[len(STAGES) - 1] == "postgres" and walk[-1] == "sqlite"

    async def work() -> tuple[dict[str, Any], list[str]]:
        expected: dict[str, Any] = {}
        deleted: set[str] = set()
        seen: list[str] = []
        async with await AgentMemory.open(dual("walker", database, agents, stage="sqlite")) as memory:
            previous = memory.stage
            for step, stage in enumerate(walk):
                if AUTHORITATIVE[stage] != AUTHORITATIVE[previous]:
                    # The side taking the lead must hold every write first.
                    repaired = await memory.repair()
                    assert repaired["parked"] == 0, repaired
                memory.set_stage(stage)
                previous = stage
                seen.append(memory.stage)
                key = f"step{step}_{stage}"
                await memory.store_memory(key, {"stage": stage, "step": step})
                expected[key] = {"stage": stage, "step": step}
                await memory.store_memory("shared", step)
                expected["shared"] = step
                if stage == "live" and "step1_dualwrite" in expected:
                    # A delete made in one stage stays deleted in every later one.
                    assert await memory.delete_memory("step1_dualwrite")
                    del expected["step1_dualwrite"]
                    deleted.add("step1_dualwrite")
                for known, value in expected.items():
                    assert await memory.retrieve_memory(known) == value, (stage, known)
                for gone in deleted:
                    assert await memory.retrieve_memory(gone) is None, (stage, gone)
                assert sorted(await memory.memory_keys()) == sorted(expected), stage
            # Back at sqlite: what PostgreSQL missed meanwhile is owed to it.
            await memory.repair()
        return expected, seen

    expected, seen = asyncio.run(work())
    assert seen == walk
    assert len(expected) == len(walk)  # one key per step plus "shared", less the deleted one
    assert sqlite_memories(agents, "walker") == expected
    assert pg_memories(sql, "walker") == expected


def test_stats_and_repair_report_what_the_backend_did(
    database: str, agents: Path, sql: psycopg.Connection
) -> None:
    async def work() -> None:
        async with await AgentMemory.open(dual("watched", database, agents, stage="sqlite")) as memory:
            stats = await memory.stats()
            assert set(stats) == STATS_KEYS
            for side in ("sqlite", "postgres"):
                assert set(stats[side]) == SIDE_KEYS
                assert set(stats[side]["read_latency"]) == LATENCY_KEYS
                assert set(stats[side]["write_latency"]) == LATENCY_KEYS
            assert stats["stage"] == "sqlite"
            assert stats["owed_pending"] == 0

            # sqlite: SQLite alone is written; PostgreSQL's copies are owed.
            await memory.store_memory("a", 1)
            await memory.store_memory("b", 2)
            assert pg_memories(sql, "watched") == {}
            stats = await memory.stats()
            assert stats["owed_recorded"] == 2
            assert stats["owed_pending"] == 2
            assert stats["sqlite"]["write_latency"]["count"] == 2
            assert stats["sqlite"]["write_latency"]["p50_us"] is not None

            repaired = await memory.repair()
            assert repaired == {"to_postgres": 2, "to_sqlite": 0, "parked": 0}
            assert pg_memories(sql, "watched") == {"a": 1, "b": 2}
            stats = await memory.stats()
            assert stats["owed_replayed"] == 2
            assert stats["owed_pending"] == 0
            assert await memory.repair() == {"to_postgres": 0, "to_sqlite": 0, "parked": 0}

            # shadow: reads are compared, and both sides agree.
            memory.set_stage("shadow")
            assert await memory.retrieve_memory("a") == 1
            stats = await memory.stats()
            assert stats["stage"] == "shadow"
            assert stats["shadow_compares"] >= 1
            assert stats["shadow_mismatches"] == 0

            # live: a key PostgreSQL misses is served by SQLite and copied into it.
            memory.set_stage("sqlite")
            await memory.store_memory("late", "only in sqlite")
            memory.set_stage("live")
            assert await memory.retrieve_memory("late") == "only in sqlite"
            stats = await memory.stats()
            assert stats["fallback_hits"] >= 1
            assert stats["lazy_copies"] >= 1
            assert stats["postgres"]["reads"] >= 1
            assert pg_memories(sql, "watched")["late"] == "only in sqlite"

            # postgres: SQLite's copy is owed, and repair brings it.
            memory.set_stage("postgres")
            await memory.store_memory("pg_first", {"v": 1})
            assert "pg_first" not in sqlite_memories(agents, "watched")
            repaired = await memory.repair()
            assert repaired["to_sqlite"] >= 1 and repaired["parked"] == 0, repaired
            assert sqlite_memories(agents, "watched")["pg_first"] == {"v": 1}

    asyncio.run(work())


def test_an_unknown_stage_is_refused_and_the_stage_stays(database: str, agents: Path) -> None:
    async def work() -> None:
        async with await AgentMemory.open(dual("steady", database, agents)) as memory:
            with pytest.raises(memshift.ConfigError, match="halfway"):
                memory.set_stage("halfway")
            assert memory.stage == "dualwrite"
            await memory.store_memory("k", "v")
            assert await memory.retrieve_memory("k") == "v"

    asyncio.run(work())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_dual_calls_on_another_backend_are_invalid_input(
    backend: str, database: str, agents: Path
) -> None:
    config = AgentConfig(
        name="plain",
        memory_backend=backend,
        database_url=database if backend == "postgres" else None,
        agents_path=str(agents),
    )

    async def work() -> None:
        async with await AgentMemory.open(config) as memory:
            with pytest.raises(memshift.InvalidInputError, match=f"memory_backend = {backend}"):
                memory.stage
            with pytest.raises(memshift.InvalidInputError, match="dual backend"):
                await memory.repair()
            with pytest.raises(memshift.InvalidInputError, match="dual backend"):
                await memory.stats()
            with pytest.raises(memshift.InvalidInputError, match="dual backend"):
                memory.set_stage("live")
            # The memory itself is unharmed.
            await memory.store_memory("k", [1, 2])
            assert await memory.retrieve_memory("k") == [1, 2]

    asyncio.run(work())


@pytest.fixture
def own_server() -> Iterator[tuple[Path, str]]:
    """A PostgreSQL server of this test's own (scripts/pg), which it may stop and start:
    its folder and URL. Removed afterwards, whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="memshift-pytest-pg-"))
    try:
        started = subprocess.run(
            [str(PG), "start", str(folder)], capture_output=True, text=True, timeout=180
        )
        assert started.returncode == 0, started.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in started.stdout.splitlines()
            if line.startswith("export ")
        )
        yield folder, exports["MEMSHIFT_TEST_DATABASE_URL"]
    finally:
        subprocess.run([str(PG), "destroy", str(folder)], capture_output=True, timeout=120)


def pg(command: str, folder: Path) -> None:
    done = subprocess.run([str(PG), command, str(folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_store_while_postgres_is_down_reaches_it_after_repair(
    own_server: tuple[Path, str], agents: Path
) -> None:
    folder, url = own_server

    def in_postgres() -> dict[str, Any]:
        with psycopg.connect(url) as conn:
            return pg_memories(conn, "resilient")

    async def work() -> None:
        await memshift.migrate_url(url)
        config = dual("resilient", url, agents, connect_timeout=3)
        async with await AgentMemory.open(config) as memory:
            await memory.store_memory("before", {"n": 1})
            assert in_postgres() == {"before": {"n": 1}}

            pg("stop", folder)
            try:
                # SQLite is authoritative in dualwrite: the store succeeds, and reads
                # find it, with PostgreSQL gone.
                await memory.store_memory("during", {"n": 2})
                assert await memory.retrieve_memory("during") == {"n": 2}
                assert sqlite_memories(agents, "resilient") == {"before": {"n": 1}, "during": {"n": 2}}
                # The counters stay readable through the outage; the journals cannot
                # all be counted.
                stats = await memory.stats()
                assert stats["owed_recorded"] >= 1
                assert stats["owed_pending"] is None
            finally:
                pg("start-existing", folder)

            repaired = await memory.repair()
            assert repaired["to_postgres"] >= 1, repaired
            assert repaired["parked"] == 0, repaired
            assert in_postgres() == {"before": {"n": 1}, "during": {"n": 2}}
            assert (await memory.stats())["owed_pending"] == 0

    asyncio.run(work())


def test_a_dual_memory_follows_its_central_stage(database: str, agents: Path) -> None:
    """A stage set centrally (as ``memctl stage set`` does: the row, then a notify) moves a
    running Python memory within seconds, without a restart."""

    async def scenario() -> None:
        config = dual("steered", database, agents, stage="dualwrite", stage_poll=30)
        async with await AgentMemory.open(config) as memory:
            assert memory.stage == "dualwrite"
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute(
                    "insert into agent_memory.stages (agent, stage) values ('steered', 'shadow')"
                )
                conn.execute("select pg_notify('agent_memory_stages', 'steered')")
            deadline = time.monotonic() + 5
            while memory.stage != "shadow":
                assert time.monotonic() < deadline, "the change never arrived"
                await asyncio.sleep(0.01)
            # A central row wins over a stage set in code.
            memory.set_stage("sqlite")
            assert memory.stage == "shadow"

    asyncio.run(scenario())
