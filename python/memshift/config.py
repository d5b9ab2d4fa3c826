"""``AgentConfig``: which backend an agent's memory uses."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from . import _native

__all__ = ["AgentConfig", "BACKENDS", "STAGES"]

BACKENDS = ("sqlite", "postgres", "dual")
"""The values of ``memory_backend``."""

STAGES = ("sqlite", "dualwrite", "shadow", "live", "rampdown", "postgres")
"""The dual backend's stages, from SQLite-only to PostgreSQL-only (``memory_stage``)."""


@dataclass(repr=False)
class AgentConfig:
    """How an agent's memory is configured, with the migration guide's fields.

    ``memory_backend`` is ``"sqlite"`` (the default: a file under
    ``agents_path/<name>/``, no server), ``"postgres"`` (``database_url`` required) or
    ``"dual"`` (both, stepping through ``memory_stage``). ``agents_path`` defaults to
    ``./agents``; ``memory_stage`` to ``"dualwrite"``. With ``memory_enabled=False`` no
    database is opened: stores do nothing and reads find nothing.

    Any object with these attributes works where an ``AgentConfig`` is expected, so an
    agent's own config class needs no change.
    """

    name: str
    memory_enabled: bool = True
    memory_backend: str = "sqlite"
    database_url: str | None = None
    agents_path: str | os.PathLike[str] | None = None
    memory_stage: str | None = None
    max_connections: int = 10
    """Most connections the PostgreSQL pool opens."""
    connect_timeout: float = 10.0
    """Seconds to wait for a PostgreSQL connection before failing."""
    stage_poll: float = 2.0
    """The dual backend follows the stages held centrally in PostgreSQL (``memctl stage
    set``), listening for changes and reading them again this often (seconds); ``0``
    keeps ``memory_stage`` for the process's life."""

    def __post_init__(self) -> None:
        # The library's own check, so the message (listing the valid names) is the same
        # as from Rust; raises ConfigError.
        _native.check_names(str(self.memory_backend), self.memory_stage)

    @classmethod
    def from_env(cls, name: str) -> AgentConfig:
        """The configuration of agent ``name`` from the environment, read exactly as the
        Rust library reads it: ``MEMORY_BACKEND``, ``MEMORY_STAGE``, ``DATABASE_URL``,
        ``AGENTS_PATH``, ``MEMORY_ENABLED``, ``MEMORY_STAGE_POLL``.

        Raises :class:`memshift.ConfigError` for an unknown backend or stage, or an
        unreadable ``MEMORY_ENABLED``.
        """
        return cls(**_native.config_from_env(name))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_shown(f.name, getattr(self, f.name))!r}" for f in fields(self)
        )
        return f"AgentConfig({shown})"


def _shown(field: str, value: Any) -> Any:
    """``value`` as a repr may show it: a database URL with its password as ``***``
    (the library's own redaction)."""
    if field == "database_url" and isinstance(value, str):
        return _native.redact_url(value)
    return value
