"""The Python side of `scripts/bench python`, started by the bench (examples/bench/python).

It reads one JSON line of settings from stdin (the database URL, the folders, the values
as JSON text), answers {"ready": ...} with the versions and SQLite settings in use, and
then runs one command per line: {"client", "backend", "agent", "value", "calls", "keys"}
makes `calls` stores of that value, then `calls` retrieves, one after another, each timed
on its own, and answers {"store_ns": [...], "retrieve_ns": [...]}. An empty line or the
end of stdin closes every store and ends it. Any failure is answered as {"error": ...}.

Clients:
  python          `await memory.store_memory(key, value)` / `await memory.retrieve_memory(key)`
  langgraph_async LangGraph's AsyncSqliteStore / AsyncPostgresStore: `await aput` / `await aget`
  langgraph_sync  LangGraph's SqliteStore / PostgresStore: `put` / `get`

Stores open on their first command (the bench's warm-up round), `setup()` included.
LangGraph's SQLite connections get the memshift backend's durability (WAL,
synchronous=FULL); its PostgreSQL stores use the same server and database.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from contextlib import AsyncExitStack, ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

# The memshift backend's SQLite settings (src/backend/sqlite/open.rs): what makes a
# commit durable.
SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL")

PACKAGES = (
    "memshift",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres",
    "psycopg",
    "aiosqlite",
)


def key_name(index: int) -> str:
    return f"memory/{index:04d}"


# The same keys in the same order as the Rust side (examples/bench/python/mod.rs).
def store_key(call: int, keys: int) -> str:
    return key_name(call % keys)


def retrieve_key(call: int, keys: int) -> str:
    return key_name((call * 7 + 3) % keys)


SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def settings_text(mode: str, sync: int) -> str:
    """`PRAGMA journal_mode` and `PRAGMA synchronous` as read back, in words."""
    return f"journal_mode={mode.upper()} synchronous={SYNCHRONOUS.get(sync, sync)}"


def sqlite_settings(conn: Any) -> str:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return settings_text(mode, sync)


class Driver:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.url: str = settings["database_url"]
        self.agents_path: str = settings["agents_path"]
        self.langgraph_path = Path(settings["langgraph_path"])
        self.values: dict[str, Any] = {
            name: json.loads(text) for name, text in settings["values"].items()
        }
        self.opened: dict[tuple[str, str, str], Any] = {}
        self.stores: dict[tuple[str, str], Any] = {}
        self.sync_stack = ExitStack()
        self.async_stack = AsyncExitStack()
        self.sqlite_settings: dict[str, str] = {}

    async def memshift(self, backend: str, agent: str) -> Any:
        from memshift import AgentConfig, AgentMemory

        key = ("python", backend, agent)
        if key not in self.opened:
            config = AgentConfig(
                name=agent,
                memory_backend=backend,
                database_url=self.url if backend == "postgres" else None,
                agents_path=self.agents_path,
            )
            memory = await AgentMemory.open(config)
            self.async_stack.push_async_callback(memory.close)
            self.opened[key] = memory
        return self.opened[key]

    async def langgraph_async(self, backend: str) -> Any:
        key = ("langgraph_async", backend)
        if key not in self.stores:
            if backend == "sqlite":
                from langgraph.store.sqlite.aio import AsyncSqliteStore

                path = self.langgraph_path / "langgraph-async.sqlite"
                store = await self.async_stack.enter_async_context(
                    AsyncSqliteStore.from_conn_string(str(path))
                )
                for pragma in SQLITE_PRAGMAS:
                    await store.conn.execute(pragma)
                mode = await (await store.conn.execute("PRAGMA journal_mode")).fetchone()
                sync = await (await store.conn.execute("PRAGMA synchronous")).fetchone()
                self.sqlite_settings["langgraph_async"] = settings_text(mode[0], sync[0])
            else:
                from langgraph.store.postgres.aio import AsyncPostgresStore

                store = await self.async_stack.enter_async_context(
                    AsyncPostgresStore.from_conn_string(self.url)
                )
            await store.setup()
            self.stores[key] = store
        return self.stores[key]

    def langgraph_sync(self, backend: str) -> Any:
        key = ("langgraph_sync", backend)
        if key not in self.stores:
            if backend == "sqlite":
                from langgraph.store.sqlite import SqliteStore

                path = self.langgraph_path / "langgraph-sync.sqlite"
                store = self.sync_stack.enter_context(SqliteStore.from_conn_string(str(path)))
                for pragma in SQLITE_PRAGMAS:
                    store.conn.execute(pragma)
                self.sqlite_settings["langgraph_sync"] = sqlite_settings(store.conn)
            else:
                from langgraph.store.postgres import PostgresStore

                store = self.sync_stack.enter_context(PostgresStore.from_conn_string(self.url))
            store.setup()
            self.stores[key] = store
        return self.stores[key]

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        client, backend, agent = command["client"], command["backend"], command["agent"]
        value = self.values[command["value"]]
        calls, keys = command["calls"], command["keys"]
        clock = time.perf_counter_ns
        stores: list[int] = []
        retrieves: list[int] = []
        if client == "python":
            memory = await self.memshift(backend, agent)
            for call in range(calls):
                key = store_key(call, keys)
                started = clock()
                await memory.store_memory(key, value)
                stores.append(clock() - started)
            for call in range(calls):
                key = retrieve_key(call, keys)
                started = clock()
                found = await memory.retrieve_memory(key)
                retrieves.append(clock() - started)
                if found is None:
                    raise LookupError(f"memshift {backend}: {key} not found")
            back = await memory.retrieve_memory(store_key(calls - 1, keys))
        elif client == "langgraph_async":
            store = await self.langgraph_async(backend)
            namespace = ("bench", agent)
            for call in range(calls):
                key = store_key(call, keys)
                started = clock()
                await store.aput(namespace, key, value)
                stores.append(clock() - started)
            for call in range(calls):
                key = retrieve_key(call, keys)
                started = clock()
                item = await store.aget(namespace, key)
                retrieves.append(clock() - started)
                if item is None:
                    raise LookupError(f"LangGraph async {backend}: {key} not found")
            back = (await store.aget(namespace, store_key(calls - 1, keys))).value
        elif client == "langgraph_sync":
            store = self.langgraph_sync(backend)
            namespace = ("bench", agent)
            for call in range(calls):
                key = store_key(call, keys)
                started = clock()
                store.put(namespace, key, value)
                stores.append(clock() - started)
            for call in range(calls):
                key = retrieve_key(call, keys)
                started = clock()
                item = store.get(namespace, key)
                retrieves.append(clock() - started)
                if item is None:
                    raise LookupError(f"LangGraph sync {backend}: {key} not found")
            back = store.get(namespace, store_key(calls - 1, keys)).value
        else:
            raise ValueError(f"unknown client {client!r}")
        if back != value:
            raise AssertionError(f"{client} {backend}: the value read back is not the one stored")
        return {"store_ns": stores, "retrieve_ns": retrieves}

    async def close(self) -> None:
        await self.async_stack.aclose()
        self.sync_stack.close()


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    driver = Driver(json.loads(sys.stdin.readline()))
    answer({"ready": True, "versions": versions()})
    try:
        # Waiting for the next command blocks the event loop on purpose: nothing else
        # runs between two measurements.
        while line := sys.stdin.readline():
            if not line.strip():
                break
            command = json.loads(line)
            if command.get("settings"):
                answer({"sqlite_settings": driver.sqlite_settings})
                continue
            try:
                answer(await driver.run(command))
            except Exception as err:  # reported to the bench, which stops
                answer({"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()})
    finally:
        await driver.close()


if __name__ == "__main__":
    import asyncio

    asyncio.run(main())
