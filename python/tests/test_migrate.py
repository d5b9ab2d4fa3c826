"""The migration guide's migrator, ``python -m memshift.migrate`` (and the console script
``memshift-migrate``), run as a user runs it: in a process of its own, with the guide's
flags and environment, on the public corpus and on small agents trees."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

MODULE = [sys.executable, "-m", "memshift.migrate"]
SCRIPT = [str(Path(sys.executable).with_name("memshift-migrate"))]
COMMANDS = {"python -m memshift.migrate": MODULE, "memshift-migrate": SCRIPT}
USAGE = "Usage: python -m memshift.migrate"

# What the guide's environment section names, and the agents' own variables: none of
# them leaks in from the environment the tests run in.
ENVIRONMENT = (
    "DATABASE_URL",
    "AGENTS_PATH",
    "MIGRATION_BATCH_SIZE",
    "MIGRATION_TIMEOUT",
    "MIGRATION_BACKUP_PATH",
    "MEMORY_BACKEND",
    "MEMORY_STAGE",
    "MEMORY_ENABLED",
)
CONTRACT_TABLES = ("agent_memories", "agent_tools", "agent_metrics", "agent_executions")
PASSWORD = "s3cr@t-Pw0rd"
PASSWORD_IN_URL = "s3cr%40t-Pw0rd"

# Tables of the public corpus moved by --map (its files keep their state in tables of
# their own names), one or more for each contract table: the file, the table, where it
# goes, and the map.
CORPUS_MAPS = [
    (
        "jm101093__CrewAIAutoblogger/long_term_memory_storage.db",
        "long_term_memories",
        "agent_memories",
        "long_term_memories=memories;key=none;files=jm101093__CrewAIAutoblogger/long_term_memory_storage.db",
    ),
    (
        "buzzwin__agent-memory-os/comparison_test.db",
        "memories",
        "agent_memories",
        "memories=memories;key=id;files=buzzwin__agent-memory-os/comparison_test.db",
    ),
    (
        "bartoszkozakiewicz__long-term-memory-agent/checkpoints.sqlite",
        "checkpoints",
        "agent_memories",
        "checkpoints=memories;key=thread_id+thread_ts;time=thread_ts;json;"
        "files=bartoszkozakiewicz__long-term-memory-agent/checkpoints.sqlite",
    ),
    (
        "dimitri__pgloader/test/sqlite/Chinook_Sqlite.sqlite",
        "Genre",
        "agent_tools",
        "Genre=tools;files=dimitri__pgloader/test/sqlite/Chinook_Sqlite.sqlite",
    ),
    (
        "dimitri__pgloader/test/sqlite/sqlite.db",
        "long",
        "agent_metrics",
        "long=metrics;files=dimitri__pgloader/test/sqlite/sqlite.db",
    ),
    (
        "Hiteshankodia__Persistence-LangGraph/checkpoints.sqlite",
        "writes",
        "agent_executions",
        "writes=executions;status=channel;time=checkpoint_id;"
        "files=Hiteshankodia__Persistence-LangGraph/checkpoints.sqlite",
    ),
    (
        "ElasRamanauskas__memory_phase_agent/memory.db",
        "risk_log",
        "agent_executions",
        "risk_log=executions;files=ElasRamanauskas__memory_phase_agent/memory.db",
    ),
]


def map_args() -> list[str]:
    return [arg for *_, spec in CORPUS_MAPS for arg in ("--map", spec)]


def environment(**set_: str | os.PathLike[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    env.update({k: str(v) for k, v in set_.items()})
    return env


def migrate(
    *args: str | os.PathLike[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    command: list[str] = MODULE,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env=environment() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def reports(folder: Path) -> list[Path]:
    return sorted(folder.glob("migration_report_*.json"))


def only_report(folder: Path) -> dict[str, Any]:
    found = reports(folder)
    assert len(found) == 1, found
    report: dict[str, Any] = json.loads(found[0].read_text())
    return report


def legacy_count(corpus: Path, source_db: str, table: str) -> int:
    """Rows of a legacy table, read without touching the file."""
    with closing(sqlite3.connect(f"file:{corpus / source_db}?mode=ro&immutable=1", uri=True)) as conn:
        (count,) = conn.execute(f'select count(*) from "{table}"').fetchone()
        return int(count)


def counts(sql: psycopg.Connection) -> dict[str, int]:
    out = {}
    for table in (*CONTRACT_TABLES, "agents"):
        (n,) = sql.execute(f"select count(*) from {table}").fetchone()  # type: ignore[misc]
        out[table] = n
    return out


def mapped_tables(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (f["source_db"], t["table"]): t
        for f in report["files"]
        for t in f["tables"]
        if t["target"] is not None
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def legacy_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in (".db", ".sqlite", ".sqlite3")
    }


def legacy_file(path: Path, memories: int = 3) -> None:
    """A legacy agent database with the guide's tables: `memory`, `tools`, `metrics` and
    `execution_log`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(
            """
            create table memory (id integer primary key, key text, content text, timestamp text);
            create table tools (id integer primary key, name text, config text);
            create table metrics (id integer primary key, name text, value real);
            create table execution_log (id integer primary key, status text, detail text);
            insert into tools (name, config) values ('search', '{"k": 3}');
            insert into metrics (name, value) values ('latency_ms', 12.5), ('tokens', 900);
            insert into execution_log (status, detail) values ('completed', 'crawl');
            """
        )
        conn.executemany(
            "insert into memory (key, content, timestamp) values (?, ?, '2024-01-15 10:30:00')",
            [(f"key{i}", f"User query about pricing {i}") for i in range(memories)],
        )


# --- the public corpus, as the guide's three commands run it -----------------------


def test_the_dry_run_reports_every_table_and_writes_nothing_to_postgres(
    public_corpus: Path, database: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    done = migrate(
        "--postgres-url", database, "--agents-path", public_corpus, "--dry-run",
        "--report-dir", report_dir, *map_args(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = only_report(report_dir)
    assert reports(tmp_path) == [], "the report goes to --report-dir only"
    assert reports(report_dir)[0].name in done.stdout, "the report's path is printed"
    assert report["dry_run"] is True
    assert report["run_id"].startswith("dry-run-")

    # Each mapped table: every row read, none written.
    tables = mapped_tables(report)
    assert set(tables) == {(db, table) for db, table, *_ in CORPUS_MAPS}
    for db, table, target, _ in CORPUS_MAPS:
        found = tables[(db, table)]
        assert found["target"] == target
        assert found["read"] == legacy_count(public_corpus, db, table), (db, table)
        assert found["inserted"] == 0 and found["failed"] == []
    assert report["totals"]["read"] == sum(
        legacy_count(public_corpus, db, table) for db, table, *_ in CORPUS_MAPS
    )
    assert report["totals"]["inserted"] == 0 and report["totals"]["failed"] == 0
    # Every other table is listed, with the map that would move it.
    track = [
        t
        for f in report["files"]
        if f["source_db"] == "dimitri__pgloader/test/sqlite/Chinook_Sqlite.sqlite"
        for t in f["tables"]
        if t["table"] == "Track"
    ]
    assert len(track) == 1 and track[0]["target"] is None
    assert track[0]["read"] == legacy_count(
        public_corpus, "dimitri__pgloader/test/sqlite/Chinook_Sqlite.sqlite", "Track"
    )
    assert track[0]["suggested_map"].startswith("--map 'Track=")

    assert counts(sql) == dict.fromkeys((*CONTRACT_TABLES, "agents"), 0)
    (runs,) = sql.execute("select count(*) from agent_memory.backfill_runs").fetchone()  # type: ignore[misc]
    assert runs == 0


def test_the_backup_copies_every_file_into_migration_backup_path_with_scripts(
    public_corpus: Path, database: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    backups = tmp_path / "elsewhere" / "backups"
    done = migrate(
        "--postgres-url", database, "--agents-path", public_corpus, "--backup",
        cwd=tmp_path,
        env=environment(MIGRATION_BACKUP_PATH=backups),
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "backups").exists(), "MIGRATION_BACKUP_PATH, not ./backups"
    (backup,) = backups.iterdir()
    assert backup.name.startswith("sqlite_backup_")

    sources = legacy_files(public_corpus)
    assert len(sources) > 1
    assert legacy_files(backup) == sources
    for name in sources:
        assert sha256(backup / name) == sha256(public_corpus / name), name
    manifest = json.loads((backup / "manifest.json").read_text())
    assert {f["source_db"] for f in manifest["files"]} == sources
    assert {f["status"] for f in manifest["files"]} == {"copied"}
    for script in ("backup_sqlite.sh", "restore_sqlite.sh"):
        checked = subprocess.run(["bash", "-n", str(backup / script)], capture_output=True, text=True)
        assert checked.returncode == 0, (script, checked.stderr)
    assert "restore_sqlite.sh" in done.stderr + done.stdout

    # A backup migrates nothing.
    assert counts(sql) == dict.fromkeys((*CONTRACT_TABLES, "agents"), 0)


def test_the_run_moves_every_row_then_verify_passes_and_a_second_run_moves_nothing(
    public_corpus: Path, database: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    first.mkdir()
    done = migrate(
        "--postgres-url", database, "--agents-path", public_corpus, *map_args(), cwd=first
    )
    assert done.returncode == 0, done.stderr
    report = only_report(first)  # --report-dir defaults to the working folder
    assert report["dry_run"] is False

    expected = {(db, table): legacy_count(public_corpus, db, table) for db, table, *_ in CORPUS_MAPS}
    by_target: Counter[str] = Counter()
    for db, table, target, _ in CORPUS_MAPS:
        by_target[target] += expected[(db, table)]
    tables = mapped_tables(report)
    for key, rows in expected.items():
        assert tables[key]["inserted"] == rows, key
        assert tables[key]["failed"] == [], key
    totals = report["totals"]
    assert totals["inserted"] == totals["read"] == sum(expected.values())
    assert totals["failed"] == 0 and totals["problem_files"] == 0

    # PostgreSQL holds exactly those rows, each saying where it came from.
    assert {t: n for t, n in counts(sql).items() if t != "agents"} == {
        t: by_target[t] for t in CONTRACT_TABLES
    }
    for db, table, target, _ in CORPUS_MAPS:
        (n,) = sql.execute(  # type: ignore[misc]
            f"select count(*) from {target} where metadata->>'source_db' = %s"
            " and metadata->>'source_table' = %s and metadata->>'migration_run' = %s",
            (db, table, report["run_id"]),
        ).fetchone()
        assert n == expected[(db, table)], (db, table)
    agents = {name for (name,) in sql.execute("select name from agents")}
    assert agents == {db.split("/")[0] for db, *_ in CORPUS_MAPS}

    # --verify compares every table with its source (reusing the run's maps).
    verified = migrate(
        "--postgres-url", database, "--agents-path", public_corpus, "--verify", cwd=first
    )
    assert verified.returncode == 0, verified.stderr
    verification = json.loads(verified.stdout)
    assert len(verification["tables"]) == len(CORPUS_MAPS)
    assert all(t["same"] for t in verification["tables"]), verification
    assert verification["problems"] == []

    # A second run (the catch-up) finds nothing new and writes nothing.
    second = tmp_path / "second"
    second.mkdir()
    before = counts(sql)
    again = migrate("--postgres-url", database, "--agents-path", public_corpus, cwd=second)
    assert again.returncode == 0, again.stderr
    caught_up = only_report(second)["totals"]
    assert caught_up["inserted"] == caught_up["updated"] == caught_up["deleted"] == 0
    assert caught_up["failed"] == 0
    assert caught_up["unchanged_tables"] == len(CORPUS_MAPS)
    assert counts(sql) == before


# --- the guide's environment ------------------------------------------------------


def test_the_environment_names_the_database_the_agents_and_the_batch_size(
    database: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    tree = tmp_path / "somewhere" / "agents"
    legacy_file(tree / "operational_crawler" / "agent.db", memories=5)
    work = tmp_path / "work"  # no ./agents here: AGENTS_PATH must be read
    work.mkdir()
    env = environment(DATABASE_URL=database, AGENTS_PATH=tree, MIGRATION_BATCH_SIZE="2")
    done = migrate(cwd=work, env=env, command=SCRIPT)
    assert done.returncode == 0, done.stderr
    report = only_report(work)
    assert report["agents_path"] == str(tree)
    assert report["totals"]["inserted"] == 5 + 1 + 2 + 1

    assert counts(sql) == {
        "agent_memories": 5,
        "agent_tools": 1,
        "agent_metrics": 2,
        "agent_executions": 1,
        "agents": 1,
    }
    rows = sql.execute(
        "select m.key, m.content, m.created_at from agent_memories m"
        " join agents a on a.id = m.agent_id where a.name = 'operational_crawler' order by m.key"
    ).fetchall()
    assert [key for key, *_ in rows] == [f"key{i}" for i in range(5)]
    assert json.loads(rows[0][1]) == {
        "id": 1,
        "key": "key0",
        "content": "User query about pricing 0",
        "timestamp": "2024-01-15 10:30:00",
    }
    assert rows[0][2] == datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc)
    (options,) = sql.execute(  # type: ignore[misc]
        "select options from agent_memory.backfill_runs where id = %s", (report["run_id"],)
    ).fetchone()
    assert options["batch_size"] == 2


def test_postgres_url_wins_over_database_url(
    database: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    legacy_file(tmp_path / "agents" / "a" / "agent.db")
    env = environment(DATABASE_URL=f"postgresql://migrator:{PASSWORD_IN_URL}@127.0.0.1:1/nowhere")
    done = migrate("--postgres-url", database, cwd=tmp_path, env=env)  # ./agents by default
    assert done.returncode == 0, done.stderr
    assert counts(sql)["agent_memories"] == 3


@pytest.mark.parametrize(
    ("variable", "option"),
    [("MIGRATION_BATCH_SIZE", "--batch-size"), ("MIGRATION_TIMEOUT", "--timeout")],
)
def test_an_unreadable_migration_setting_stops_before_anything_runs(
    variable: str, option: str, database: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    legacy_file(tmp_path / "agents" / "a" / "agent.db")
    done = migrate(cwd=tmp_path, env=environment(DATABASE_URL=database, **{variable: "lots"}))
    assert done.returncode == 2
    assert "'lots'" in done.stderr and option in done.stderr
    assert reports(tmp_path) == []
    assert counts(sql)["agent_memories"] == 0


def test_a_batch_held_up_past_migration_timeout_fails(
    database: str, tmp_path: Path
) -> None:
    legacy_file(tmp_path / "agents" / "a" / "agent.db")
    env = environment(DATABASE_URL=database, MIGRATION_TIMEOUT="1")
    with psycopg.connect(database) as blocker:
        # Reads go on; every write into agent_memories waits for this transaction.
        blocker.execute("lock table agent_memories in exclusive mode")
        started = time.monotonic()
        process = subprocess.Popen(
            [*MODULE], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            # Four attempts of a second each, and the waits between them.
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        finally:
            blocker.rollback()
        _, stderr = process.communicate(timeout=120)
        elapsed = time.monotonic() - started
    assert process.returncode == 1, stderr
    assert elapsed < 15
    failed = [
        failure
        for table in only_report(tmp_path)["files"][0]["tables"]
        for failure in table["failed"]
    ]
    assert failed and "longer than" in failed[0]["reason"], failed


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("given", ["--postgres-url", "DATABASE_URL"])
def test_an_unreachable_server_exits_2_without_showing_the_password(
    given: str, tmp_path: Path
) -> None:
    legacy_file(tmp_path / "agents" / "a" / "agent.db")
    url = f"postgresql://migrator:{PASSWORD_IN_URL}@127.0.0.1:1/agents"
    if given == "DATABASE_URL":
        done = migrate(cwd=tmp_path, env=environment(DATABASE_URL=url))
    else:
        done = migrate("--postgres-url", url, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "cannot connect" in done.stderr
    assert "migrator:***@127.0.0.1:1" in done.stderr, "the URL is named, without its password"
    for output in (done.stdout, done.stderr):
        assert PASSWORD not in output and PASSWORD_IN_URL not in output and "Pw0rd" not in output
    for report in reports(tmp_path):
        assert "Pw0rd" not in report.read_text()


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_bad_flag_exits_2_with_the_usage(command: list[str], tmp_path: Path) -> None:
    done = migrate("--dry-rnu", cwd=tmp_path, command=command)
    assert done.returncode == 2
    assert "--dry-rnu" in done.stderr
    assert USAGE in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_help_lists_the_guides_flags_and_environment(command: list[str], tmp_path: Path) -> None:
    done = migrate("--help", cwd=tmp_path, command=command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Move legacy agent SQLite databases into PostgreSQL")
    assert USAGE in done.stdout
    for name in (
        "--postgres-url",
        "--agents-path",
        "--dry-run",
        "--backup",
        "--verify",
        "--follow",
        "DATABASE_URL",
        "AGENTS_PATH",
        "MIGRATION_BATCH_SIZE",
        "MIGRATION_TIMEOUT",
        "MIGRATION_BACKUP_PATH",
    ):
        assert name in done.stdout, name
    assert "Exit status:" in done.stdout


def test_the_backup_script_restores_the_files_as_they_were(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    legacy = agents / "support" / "legacy.db"
    legacy_file(legacy)
    original = legacy.read_bytes()
    done = migrate("--backup", cwd=tmp_path, env=environment(MIGRATION_BACKUP_PATH=tmp_path / "bk"))
    assert done.returncode == 0, done.stderr
    (backup,) = (tmp_path / "bk").iterdir()

    with closing(sqlite3.connect(legacy)) as conn, conn:
        conn.execute("delete from memory")
    assert legacy.read_bytes() != original
    restored = subprocess.run(
        ["bash", str(backup / "restore_sqlite.sh")], capture_output=True, text=True, timeout=60
    )
    assert restored.returncode == 0, restored.stderr
    assert legacy.read_bytes() == original


# --- signals ------------------------------------------------------------------------


class Lines:
    """The lines a process writes to one of its pipes, as they come."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        """The next line holding `text`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in time; lines so far:\n{''.join(self.seen)}")

    def rest(self) -> str:
        while (line := self._queue.get(timeout=30)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


@pytest.fixture
def following(database: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """`--follow --interval 1` on a small tree: the process, the legacy file and the
    report folder. Killed afterwards if still running."""
    legacy = tmp_path / "agents" / "support" / "legacy.db"
    legacy_file(legacy)
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    process = subprocess.Popen(
        [*MODULE, "--postgres-url", database, "--agents-path", str(tmp_path / "agents"),
         "--report-dir", str(report_dir), "--follow", "--interval", "1"],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, legacy, report_dir
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_follow_stops_cleanly_on_a_signal_with_its_last_report(
    signum: signal.Signals,
    following: tuple[subprocess.Popen[str], Path, Path],
    sql: psycopg.Connection,
) -> None:
    process, legacy, report_dir = following
    assert process.stdout is not None and process.stderr is not None
    out, err = Lines(process.stdout), Lines(process.stderr)

    err.wait_for("round 1 (")
    out.wait_for("migration_report_")
    assert counts(sql)["agent_memories"] == 3

    # An agent keeps writing its legacy file: the next rounds bring the row.
    with closing(sqlite3.connect(legacy)) as conn, conn:
        conn.execute("insert into memory (key, content) values ('late', 'written while following')")
    err.wait_for(", 1 inserted,")
    out.wait_for("migration_report_")
    (content,) = sql.execute("select content from agent_memories where key = 'late'").fetchone()  # type: ignore[misc]
    assert json.loads(content)["content"] == "written while following"

    # Then rounds find nothing new; stop during them.
    err.wait_for("idle rounds")
    recorded = reports(report_dir)
    assert len(recorded) == 2
    process.send_signal(signum)
    assert process.wait(timeout=60) == 0
    stderr = err.rest()
    out.rest()

    assert f"{signum.name}: stopping" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    # The last (idle) round's report is written on the way out.
    after = reports(report_dir)
    assert len(after) == 3 and set(recorded) < set(after)
    last = json.loads((set(after) - set(recorded)).pop().read_text())
    assert last["totals"]["inserted"] == 0 and last["totals"]["failed"] == 0
    statuses: dict[str, str] = dict(sql.execute("select id, status from agent_memory.backfill_runs").fetchall())
    follows = {status for run, status in statuses.items() if run.startswith("follow-")}
    assert follows == {"stopped"}
    assert statuses[last["run_id"]] in ("succeeded", "stopped")
