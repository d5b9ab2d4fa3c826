"""The migration guide's "Agent Updates Required", run as written: an agent subclassing
``EnhancedAgentBase`` (tests/guide/shared/templates, a workspace's base class on
``MemoryMixin``) moves from SQLite to PostgreSQL by changing its import and its
``AgentConfig``, and its memory calls stay the same."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

GUIDE = Path(__file__).parent / "guide"

DATA = {"content": "User query about pricing", "timestamp": "2024-01-15 10:30:00", "n": 2**70}


@pytest.fixture(autouse=True)
def guide_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(GUIDE))
    # The agents run in a folder of their own: the SQLite backend's ./agents is there.
    monkeypatch.chdir(tmp_path)
    for name in list(sys.modules):
        if name == "shared" or name.startswith("shared."):
            del sys.modules[name]


def old_agent_class() -> Any:
    # Old (deprecated)
    with pytest.warns(DeprecationWarning):
        module = importlib.import_module("shared.templates.enhanced_agent_base")
    return module.EnhancedAgentBase, module.AgentConfig


def new_agent_class() -> Any:
    # New (recommended)
    module = importlib.import_module("shared.templates.enhanced_agent_base_postgres")
    return module.EnhancedAgentBase, module.AgentConfig


def make_agent(base: Any) -> Any:
    class MyAgent(base):  # type: ignore[misc, valid-type]
        async def work(self, data: Any) -> Any:
            # "3. Update Memory Operations", as the guide writes them.
            await self.store_memory("key", data)
            result = await self.retrieve_memory("key")
            return result

    return MyAgent


def run_agent(agent: Any, data: Any) -> Any:
    async def go() -> Any:
        try:
            return await agent.work(data)
        finally:
            await agent.close_memory()

    return asyncio.run(go())


def test_the_old_sqlite_agent_keeps_its_memory_in_its_sqlite_file() -> None:
    EnhancedAgentBase, AgentConfig = old_agent_class()
    # Old (SQLite)
    agent_config = AgentConfig(
        name="my_agent",
        memory_enabled=True,
        memory_backend="sqlite"
    )
    result = run_agent(make_agent(EnhancedAgentBase)(agent_config), DATA)
    assert result == DATA
    assert list(result) == list(DATA)
    files = list(Path("agents/my_agent").glob("*.db"))
    assert files, "the agent's SQLite file is under ./agents/my_agent"
    tables = [
        name
        for (name,) in sqlite3.connect(files[0]).execute(
            "select name from sqlite_master where type = 'table'"
        )
    ]
    found = [
        row
        for table in tables
        if "memor" in table
        for row in sqlite3.connect(files[0]).execute(f'select * from "{table}"')
        if any(isinstance(v, str) and "User query about pricing" in v for v in row)
    ]
    assert found, f"the value is in the SQLite file ({tables})"


def test_the_new_postgres_agent_stores_in_postgresql(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database)
    EnhancedAgentBase, AgentConfig = new_agent_class()
    # New (PostgreSQL)
    agent_config = AgentConfig(
        name="my_agent",
        memory_enabled=True,
        memory_backend="postgres",
        database_url=os.getenv("DATABASE_URL")
    )
    result = run_agent(make_agent(EnhancedAgentBase)(agent_config), DATA)
    assert result == DATA
    assert list(result) == list(DATA)
    assert not Path("agents").exists(), "nothing was written to SQLite"
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "select m.content from agent_memories m join agents a on a.id = m.agent_id "
            "where a.name = 'my_agent' and m.key = 'key'"
        ).fetchall()
    assert len(rows) == 1
    stored = json.loads(rows[0][0])
    assert stored == DATA and list(stored) == list(DATA)
    # The big int is stored as its digits, not rounded through a float.
    assert str(2**70) in rows[0][0]


def test_an_agent_switches_backends_by_its_import_and_config_alone(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same agent code, run on SQLite and then on PostgreSQL: each backend holds
    what that run stored, and neither sees the other's (the backfill moves old data)."""
    monkeypatch.setenv("DATABASE_URL", database)
    OldBase, OldConfig = old_agent_class()
    old = make_agent(OldBase)(OldConfig(name="switcher", memory_backend="sqlite"))
    assert run_agent(old, {"side": "sqlite"}) == {"side": "sqlite"}

    NewBase, NewConfig = new_agent_class()
    new = make_agent(NewBase)(
        NewConfig(
            name="switcher",
            memory_backend="postgres",
            database_url=os.getenv("DATABASE_URL"),
        )
    )

    async def before_and_after() -> tuple[Any, Any]:
        try:
            before = await new.retrieve_memory("key")
            return before, await new.work({"side": "postgres"})
        finally:
            await new.close_memory()

    before, after = asyncio.run(before_and_after())
    assert before is None
    assert after == {"side": "postgres"}
    again = make_agent(OldBase)(OldConfig(name="switcher", memory_backend="sqlite"))

    async def sqlite_value() -> Any:
        try:
            return await again.retrieve_memory("key")
        finally:
            await again.close_memory()

    assert asyncio.run(sqlite_value()) == {"side": "sqlite"}


def test_a_disabled_memory_stores_nothing_and_finds_nothing() -> None:
    EnhancedAgentBase, AgentConfig = new_agent_class()
    agent = make_agent(EnhancedAgentBase)(AgentConfig(name="quiet", memory_enabled=False))
    assert run_agent(agent, DATA) is None
    assert not Path("agents").exists()


def test_from_env_reads_the_same_variables_as_the_rust_library(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memshift

    monkeypatch.setenv("MEMORY_BACKEND", "postgres")
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("AGENTS_PATH", "/srv/agents")
    monkeypatch.setenv("MEMORY_STAGE", "shadow")
    config = memshift.AgentConfig.from_env("env_agent")
    assert (config.name, config.memory_backend, config.database_url) == (
        "env_agent",
        "postgres",
        database,
    )
    assert (str(config.agents_path), config.memory_stage, config.memory_enabled) == (
        "/srv/agents",
        "shadow",
        True,
    )
    monkeypatch.setenv("MEMORY_BACKEND", "mongodb")
    with pytest.raises(memshift.ConfigError, match="MEMORY_BACKEND.*sqlite, postgres, dual"):
        memshift.AgentConfig.from_env("env_agent")
    monkeypatch.setenv("MEMORY_BACKEND", "postgres")
    monkeypatch.setenv("MEMORY_ENABLED", "perhaps")
    with pytest.raises(memshift.ConfigError, match="MEMORY_ENABLED"):
        memshift.AgentConfig.from_env("env_agent")
