"""The package with asyncio: many tasks at once, calls that wait without blocking the
event loop, one memory across event loops and threads, cancellation, and a process that
ends cleanly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from memshift import AgentConfig, AgentMemory


def pg_config(database: str, name: str) -> AgentConfig:
    return AgentConfig(name=name, memory_backend="postgres", database_url=database)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "dual"])
def test_two_hundred_tasks_at_once(backend: str, agents: Path, database: str) -> None:
    config = AgentConfig(
        name=f"crowd_{backend}",
        memory_backend=backend,
        database_url=None if backend == "sqlite" else database,
        agents_path=agents,
    )

    async def worker(memory: AgentMemory, i: int) -> Any:
        await memory.store_memory(f"k{i}", {"i": i, "big": 2**80 + i})
        await memory.store_memory("shared", i)
        return await memory.retrieve_memory(f"k{i}")

    async def body() -> None:
        async with await AgentMemory.open(config) as memory:
            results = await asyncio.gather(*(worker(memory, i) for i in range(200)))
            assert results == [{"i": i, "big": 2**80 + i} for i in range(200)]
            assert len(await memory.memory_keys(prefix="k")) == 200
            assert await memory.retrieve_memory("shared") in range(200)

    asyncio.run(body())


def test_a_waiting_call_does_not_block_the_event_loop(database: str) -> None:
    async def body(memory: AgentMemory, holder: psycopg.Connection) -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        # create_task takes the call like any coroutine.
        store = asyncio.create_task(memory.store_memory("locked", "after"))
        await asyncio.sleep(1.0)
        assert not store.done(), "the store waits for the row lock"
        waited_ticks = ticks
        holder.commit()
        await asyncio.wait_for(store, 10)
        ticking.cancel()
        # About 100 ticks in the second: the loop ran while the call waited.
        assert waited_ticks >= 50, f"only {waited_ticks} ticks: the event loop was blocked"
        assert await memory.retrieve_memory("locked") == "after"

    with_locked_row(database, "waiter", body)


def test_a_cancelled_call_leaves_the_memory_usable(database: str) -> None:
    async def body(memory: AgentMemory, holder: psycopg.Connection) -> None:
        store = asyncio.ensure_future(memory.store_memory("locked", "after"))
        await asyncio.sleep(0.3)
        store.cancel()
        with pytest.raises(asyncio.CancelledError):
            await store
        holder.commit()
        # A cancelled write's outcome is unknown: either value, never anything else.
        assert await memory.retrieve_memory("locked") in ("before", "after")
        await memory.store_memory("locked", "later")
        assert await memory.retrieve_memory("locked") == "later"
        await memory.store_memory("other", 1)
        assert await memory.memory_keys() == ["locked", "other"]

    with_locked_row(database, "canceller", body)


def with_locked_row(database: str, agent: str, body: Any) -> None:
    """Runs `body(memory, holder)` with the row of key "locked" (value "before") locked
    by `holder`, which is released in the end whatever happens (closing the memory
    waits for the statements running)."""

    async def run() -> None:
        memory = await AgentMemory.open(pg_config(database, agent))
        await memory.store_memory("locked", "before")
        holder = psycopg.connect(database)
        try:
            row = holder.execute(
                "select id from agent_memories where key = 'locked' for update"
            ).fetchone()
            assert row is not None
            await body(memory, holder)
        finally:
            holder.rollback()
            holder.close()
            await memory.close()

    asyncio.run(run())


def test_one_memory_across_event_loops_in_turn(database: str) -> None:
    memory = asyncio.run(AgentMemory.open(pg_config(database, "loops")))
    for i in range(4):
        asyncio.run(memory.store_memory(f"loop{i}", i))
    assert asyncio.run(memory.memory_keys()) == [f"loop{i}" for i in range(4)]
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(memory.retrieve_memory("loop3")) == 3
    finally:
        loop.close()
    asyncio.run(memory.close())


def test_one_memory_from_threads_each_with_its_loop(database: str) -> None:
    memory = asyncio.run(AgentMemory.open(pg_config(database, "threads")))
    errors: list[BaseException] = []

    def thread(n: int) -> None:
        async def work() -> None:
            for i in range(25):
                await memory.store_memory(f"t{n}-{i}", [n, i])
                assert await memory.retrieve_memory(f"t{n}-{i}") == [n, i]

        try:
            asyncio.run(work())
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(asyncio.run(memory.memory_keys())) == 100
    asyncio.run(memory.close())


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from memshift import AgentConfig, AgentMemory

    async def main(close):
        config = AgentConfig(name="exiting", memory_backend=sys.argv[1],
                             database_url=sys.argv[2], agents_path=sys.argv[3])
        memory = await AgentMemory.open(config)
        await memory.store_memory("k", {"written": True})
        if close:
            await memory.close()
        print("done", flush=True)

    asyncio.run(main(sys.argv[4] == "close"))
    """
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "dual"])
@pytest.mark.parametrize("ending", ["close", "no-close"])
def test_a_process_ends_cleanly_with_or_without_close(
    backend: str, ending: str, database: str, agents: Path
) -> None:
    # Without the exit barrier (python/src/bridge.rs) about one exit in three crashed
    # after the last line; five exits each make a miss unlikely.
    for _ in range(5):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, backend, database, str(agents), ending],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "done"
        assert "Traceback" not in done.stderr and "panicked" not in done.stderr, done.stderr
        assert time.monotonic() - started < 30

    async def read() -> Any:
        config = AgentConfig(
            name="exiting",
            memory_backend=backend,
            database_url=database,
            agents_path=agents,
        )
        async with await AgentMemory.open(config) as memory:
            return await memory.retrieve_memory("k")

    assert asyncio.run(read()) == {"written": True}
