"""Editors and mypy know the API: the package ships py.typed and stubs for its extension
module, so an agent's code type-checks under `mypy --strict`, and a wrong call is
caught before it runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GOOD = textwrap.dedent(
    """
    import asyncio
    import os
    from typing import Any

    import memshift
    from memshift import AgentConfig, AgentMemory, MemoryMixin, Neighbor, Tool


    class Agent(MemoryMixin):
        def __init__(self, config: AgentConfig) -> None:
            self.config = config


    async def main() -> None:
        config = AgentConfig(name="typed", memory_backend="sqlite", database_url=os.getenv("DATABASE_URL"))
        async with await AgentMemory.open(config) as memory:
            await memory.store_memory("k", {"a": 1}, embedding=[0.1, 0.2], metadata={"m": True})
            value: Any = await memory.retrieve_memory("k")
            keys: list[str] = await memory.memory_keys(prefix="k", limit=3)
            near: list[Neighbor] = await memory.search([0.1, 0.2], k=3, metric="l2")
            tool: Tool | None = await memory.get_tool("t")
            deleted: bool = await memory.delete_memory("k")
            print(value, keys, near, tool, deleted, memory.backend)
        agent = Agent(config)
        await agent.store_memory("k", [1, 2])
        print(await agent.retrieve_memory("k"))
        try:
            AgentConfig(name="x", memory_backend="mongo")
        except memshift.ConfigError as err:
            print(err)

    asyncio.run(main())
    """
)

BAD = textwrap.dedent(
    """
    from memshift import AgentMemory

    async def wrong(memory: AgentMemory) -> None:
        await memory.store_memory(42, {"a": 1})
        keys: list[int] = await memory.memory_keys()
        await memory.search("not a vector")
    """
)


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "agent.py"
    path.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_an_agent_using_the_api_type_checks_strictly(tmp_path: Path) -> None:
    checked = mypy(tmp_path, GOOD)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_wrong_calls_are_caught_by_mypy(tmp_path: Path) -> None:
    checked = mypy(tmp_path, BAD)
    assert checked.returncode == 1, checked.stdout
    out = checked.stdout
    assert 'Argument 1 to "store_memory" of "AgentMemory" has incompatible type "int"' in out
    assert "list[str]" in out and "list[int]" in out
    assert 'Argument 1 to "search" of "AgentMemory" has incompatible type "str"' in out


def test_the_package_itself_type_checks_with_its_stubs(tmp_path: Path) -> None:
    import memshift

    package = Path(memshift.__file__).parent
    assert (package / "py.typed").exists()
    assert (package / "_native.pyi").exists()
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "-p", "memshift"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # the installed package, as a user's mypy finds it
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    "name",
    ["AgentMemory.open", "AgentMemory.store_memory", "AgentMemory.search", "MemoryMixin", "AgentConfig.from_env"],
)
def test_the_api_has_docstrings(name: str) -> None:
    import memshift

    obj: object = memshift
    for part in name.split("."):
        obj = getattr(obj, part)
    assert obj.__doc__ and len(obj.__doc__.strip()) > 20
