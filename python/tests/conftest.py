"""Fixtures of the Python package's suite: a database of its own per test on the test
server that scripts/test starts (never skipped: without the server the suite fails),
and the public corpus, which is outside the repository."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import memshift

URL_VAR = "MEMSHIFT_TEST_DATABASE_URL"
REPO = Path(__file__).resolve().parents[2]


def admin_url() -> str:
    url = os.environ.get(URL_VAR)
    if not url:
        pytest.fail(
            f"{URL_VAR} is not set: run the suite with scripts/test, which starts "
            "PostgreSQL with pgvector (or start one with scripts/pg start DIR and source "
            "its export lines)",
            pytrace=False,
        )
    return url


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def new_database() -> str:
    """A new empty database's URL (left in place for inspection; the server is thrown
    away when scripts/test ends)."""
    name = f"am_test_py_{uuid.uuid4().hex}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f"create database {name}")
    return with_database(admin_url(), name)


@pytest.fixture
def empty_database() -> str:
    return new_database()


@pytest.fixture
def database() -> str:
    """A new database with the shipped migrations applied."""
    url = new_database()
    asyncio.run(memshift.migrate_url(url))
    return url


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    path = tmp_path / "agents"
    path.mkdir()
    return path


@pytest.fixture
def sql(database: str) -> Iterator[psycopg.Connection]:
    """A psycopg connection to `database`, to see what landed in PostgreSQL."""
    with psycopg.connect(database, autocommit=True) as conn:
        yield conn


def corpus() -> Path | None:
    """The public corpus (real SQLite files from agent frameworks and pgloader), or None
    when absent; MEMSHIFT_REQUIRE_CORPUS=1 (CI) makes its absence a failure."""
    path = Path(os.environ.get("MEMSHIFT_CORPUS", REPO.parent / "shared" / "corpus" / "public"))
    if path.is_dir():
        return path
    return None


@pytest.fixture
def public_corpus(request: pytest.FixtureRequest) -> Path:
    path = corpus()
    if path is not None:
        return path
    if os.environ.get("MEMSHIFT_REQUIRE_CORPUS") == "1":
        pytest.fail("the public corpus is required (MEMSHIFT_REQUIRE_CORPUS=1) and absent")
    # Listed at the end of scripts/test among the tests not run.
    not_run = os.environ.get("MEMSHIFT_NOT_RUN")
    if not_run:
        with open(not_run, "a") as out:
            out.write(f"python/tests: {request.node.name}\n")
    pytest.skip("not run: the public corpus is absent")
