"""The README's Python section works as written: its install command is the one the
test command uses, and its programs run and print what it says."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## From Python\n")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


def test_the_install_command_is_the_one_the_tests_use() -> None:
    assert blocks("sh") == ["pip install ./python\n"]
    assert "pip\" install -q --force-reinstall --no-deps ./python" in (
        REPO / "scripts" / "test"
    ).read_text()


def test_the_ten_line_agent_prints_what_the_readme_says(tmp_path: Path) -> None:
    agent = blocks("python")[0]
    ran = subprocess.run(
        [sys.executable, "-c", agent], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    said = re.search(r"It prints `(.*?)`", section())
    assert said is not None
    assert ran.stdout.strip() == said.group(1)
    db = tmp_path / "agents" / "my_agent" / "memory.db"
    assert db.exists(), "the README says where the data is"
    rows = sqlite3.connect(db).execute("select key from agent_memories").fetchall()
    assert rows == [("key",)]


def test_the_postgres_config_opens_on_postgresql(database: str, tmp_path: Path) -> None:
    config = blocks("python")[1]
    program = config + (
        "\nimport asyncio\nfrom memshift import AgentMemory\n"
        "async def main():\n"
        "    async with await AgentMemory.open(agent_config) as memory:\n"
        "        await memory.store_memory('key', 1)\n"
        "        print(memory.backend, await memory.retrieve_memory('key'))\n"
        "asyncio.run(main())\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"DATABASE_URL": database, "PATH": "/usr/bin:/bin"},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "postgres 1"
    assert not (tmp_path / "agents").exists()
