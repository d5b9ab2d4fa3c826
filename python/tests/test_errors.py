"""Errors come as the package's exceptions, each also the built-in kind it is, with the
library's messages and never a password."""

from __future__ import annotations

import asyncio
import builtins
import socket
from pathlib import Path
from typing import Any

import pytest

import memshift
from memshift import AgentConfig, AgentMemory

PASSWORD = "s3cret-Pa55word"


def open_memory(config: Any) -> AgentMemory:
    return asyncio.run(AgentMemory.open(config))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_hierarchy() -> None:
    for kind in (
        memshift.ConfigError,
        memshift.InvalidInputError,
        memshift.ConnectionError,
        memshift.SchemaError,
        memshift.DatabaseError,
    ):
        assert issubclass(kind, memshift.Error)
    assert issubclass(memshift.ConfigError, ValueError)
    assert issubclass(memshift.InvalidInputError, ValueError)
    assert issubclass(memshift.ConnectionError, builtins.ConnectionError)


def test_an_unknown_backend_or_stage_is_refused_when_configured() -> None:
    with pytest.raises(memshift.ConfigError, match='unknown memory backend "mongo"; valid backends are: sqlite, postgres, dual'):
        AgentConfig(name="a", memory_backend="mongo")
    with pytest.raises(memshift.ConfigError, match="unknown migration stage"):
        AgentConfig(name="a", memory_backend="dual", memory_stage="halfway")


def test_postgres_without_a_url_says_how_to_give_one(agents: Path) -> None:
    with pytest.raises(memshift.ConfigError, match="DATABASE_URL"):
        open_memory(AgentConfig(name="a", memory_backend="postgres", agents_path=agents))


def test_an_unreachable_server_is_a_connection_error_without_the_password() -> None:
    url = f"postgresql://agent:{PASSWORD}@127.0.0.1:{free_port()}/agents"
    config = AgentConfig(name="a", memory_backend="postgres", database_url=url, connect_timeout=3)
    with pytest.raises(memshift.ConnectionError) as failed:
        open_memory(config)
    message = str(failed.value)
    assert "127.0.0.1" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(failed.value)
    # The config's repr hides it too.
    assert PASSWORD not in repr(config) and "***" in repr(config)


def test_a_wrong_password_is_refused_without_showing_it(database: str) -> None:
    wrong = database.replace("postgres:", "postgres:x", 1)  # the user's password, changed
    assert wrong != database
    with pytest.raises(memshift.Error) as refused:
        open_memory(AgentConfig(name="a", memory_backend="postgres", database_url=wrong))
    secret = wrong.split(":")[2].split("@")[0]
    assert secret not in str(refused.value)
    assert "password" in str(refused.value).lower()


def test_a_database_without_the_tables_is_a_schema_error_naming_them(empty_database: str) -> None:
    with pytest.raises(memshift.SchemaError) as missing:
        open_memory(
            AgentConfig(name="a", memory_backend="postgres", database_url=empty_database)
        )
    assert "agent_memories" in str(missing.value)


def test_the_shipped_migrations_make_the_tables(empty_database: str) -> None:
    applied = asyncio.run(memshift.migrate_url(empty_database))
    assert applied, "a new database gets every migration"
    assert asyncio.run(memshift.migrate_url(empty_database)) == [], "and none twice"
    memory = open_memory(
        AgentConfig(name="a", memory_backend="postgres", database_url=empty_database)
    )

    async def use() -> Any:
        await memory.store_memory("k", 1)
        value = await memory.retrieve_memory("k")
        await memory.close()
        return value

    assert asyncio.run(use()) == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "it is empty"), ("../escape", "agent name"), ("a/b", "agent name")],
)
def test_a_name_that_cannot_be_an_agent_is_invalid_input(
    name: str, message: str, agents: Path
) -> None:
    with pytest.raises(memshift.InvalidInputError, match=message):
        open_memory(AgentConfig(name=name, agents_path=agents))


def test_bad_keys_and_embeddings_are_invalid_input(agents: Path) -> None:
    async def body() -> None:
        async with await AgentMemory.open(AgentConfig(name="keys", agents_path=agents)) as memory:
            with pytest.raises(memshift.InvalidInputError, match="key"):
                await memory.store_memory("nul\x00inside", 1)
            with pytest.raises(memshift.InvalidInputError, match="key"):
                await memory.store_memory("k" * 10_000, 1)
            with pytest.raises(memshift.InvalidInputError, match="NaN|finite"):
                await memory.store_memory("k", 1, embedding=[0.1, float("nan")])
            with pytest.raises(TypeError):
                await memory.store_memory(1, 1)  # type: ignore[arg-type]
            assert await memory.memory_keys() == []

    asyncio.run(body())


def test_a_corrupt_sqlite_file_is_a_database_error_naming_it(agents: Path) -> None:
    folder = agents / "broken"
    folder.mkdir()

    async def first() -> None:
        async with await AgentMemory.open(AgentConfig(name="broken", agents_path=agents)) as m:
            await m.store_memory("k", 1)

    asyncio.run(first())
    (db,) = folder.glob("*.db")
    db.write_bytes(b"this is not a database" * 100)
    for extra in folder.glob("*.db-*"):
        extra.unlink()

    async def second() -> None:
        async with await AgentMemory.open(AgentConfig(name="broken", agents_path=agents)) as m:
            await m.retrieve_memory("k")

    with pytest.raises(memshift.DatabaseError) as failed:
        asyncio.run(second())
    assert db.name in str(failed.value)


def test_a_closed_memory_says_so(agents: Path) -> None:
    async def body() -> None:
        memory = await AgentMemory.open(AgentConfig(name="closing", agents_path=agents))
        await memory.store_memory("k", 1)
        await memory.close()
        await memory.close()  # a second close does nothing
        assert memory.closed
        with pytest.raises(memshift.InvalidInputError, match='"closing" is closed'):
            await memory.retrieve_memory("k")

    asyncio.run(body())


def test_the_dual_calls_on_another_backend_say_which_backend_it_is(agents: Path) -> None:
    async def body() -> None:
        async with await AgentMemory.open(AgentConfig(name="solo", agents_path=agents)) as m:
            with pytest.raises(memshift.InvalidInputError, match="memory_backend = sqlite"):
                m.stage
            with pytest.raises(memshift.InvalidInputError, match="dual backend"):
                await m.repair()

    asyncio.run(body())
