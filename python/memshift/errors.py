"""The exceptions memshift raises.

Every one is a :class:`memshift.Error`, and also the built-in exception it is a kind of,
so ``except ValueError`` and ``except ConnectionError`` keep working in code written
before memshift. Messages carry the whole chain of causes and never a password.
"""

from __future__ import annotations

import builtins

__all__ = [
    "Error",
    "ConfigError",
    "InvalidInputError",
    "ConnectionError",
    "SchemaError",
    "DatabaseError",
]


class Error(Exception):
    """Anything memshift refuses or fails to do."""


class ConfigError(Error, ValueError):
    """The configuration cannot work: an unknown backend or stage, PostgreSQL without a
    URL, a malformed URL."""


class InvalidInputError(Error, ValueError):
    """A call's input was refused before anything was written: a bad key or agent name, a
    value JSON cannot hold (a set, NaN, a dict with int keys), an embedding with NaN, a
    closed memory."""


class ConnectionError(Error, builtins.ConnectionError):
    """The database could not be reached, or the connection was lost during the call. A
    write that failed this way may or may not have been applied: storing, registering or
    deleting again is safe (each replaces the whole value); a metric or execution
    recorded again may then be there twice."""


class SchemaError(Error):
    """PostgreSQL lacks tables or columns the library needs; the message says which and
    how to create them (``python -m memshift.migrate --migrate``, or the admin
    application's Prisma migrations)."""


class DatabaseError(Error):
    """A database refused or failed a statement for a reason other than the connection
    (a corrupt SQLite file, a full disk, a permission), named in the message."""
