//! The listing statements of both databases, with a [`Listing`](crate::Listing)'s
//! bounds in SQL: one text per kind of record, database and set of bounds.

use chrono::{DateTime, Utc};
use sqlx::{Arguments, ColumnIndex, Decode, Encode, Row, Type};

use crate::error::{Error, Result};
use crate::listing::Bounds;

/// What a listing lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    MemoryKeys,
    Tools,
    Metrics,
    Executions,
}

/// Which database a statement is for.
// A one-backend build constructs only its own dialect.
#[cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `?` parameters, in the order of [`statement`]'s binds.
    Sqlite,
    /// `$1` is the agent's row id; the binds follow from `$2`.
    Postgres,
}

impl Kind {
    /// What is listed, for error messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::MemoryKeys => "memory keys",
            Kind::Tools => "tools",
            Kind::Metrics => "metrics",
            Kind::Executions => "executions",
        }
    }

    /// The columns read, the table, and the column the prefix and `since` look at.
    fn shape(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::MemoryKeys => ("key", "agent_memories", "key", "updated_at"),
            Kind::Tools => (
                "id, name, content, metadata, created_at, updated_at",
                "agent_tools",
                "name",
                "updated_at",
            ),
            Kind::Metrics => (
                "id, name, value, content, metadata, created_at",
                "agent_metrics",
                "name",
                "created_at",
            ),
            Kind::Executions => (
                "id, status, content, metadata, created_at",
                "agent_executions",
                "status",
                "created_at",
            ),
        }
    }

    /// Whether the listing is in order of its text column (keys, names) rather than of
    /// `created_at` and id.
    fn by_text(self) -> bool {
        matches!(self, Kind::MemoryKeys | Kind::Tools)
    }
}

/// The statement of a listing of `kind` with `bounds`. Its parameters, after the
/// agent's row id in PostgreSQL, are the prefix, the end of its range and `since`, each
/// only when the bounds have it, then the limit (null for none); [`bind`] adds them.
///
/// The prefix is a range of the text column (see [`Bounds`]), compared in byte order:
/// SQLite's default, and PostgreSQL's `collate "C"`, whatever the database's locale. The
/// order is the same on both: keys and names in byte order, records by `created_at`
/// then id (SQLite's id text sorts as PostgreSQL's `uuid`).
pub(crate) fn statement(kind: Kind, bounds: &Bounds, dialect: Dialect) -> String {
    let (columns, table, text, time) = kind.shape();
    let mut next = 1;
    let mut param = || match dialect {
        Dialect::Sqlite => "?".to_string(),
        Dialect::Postgres => {
            next += 1;
            format!("${next}")
        }
    };
    let text_order = match dialect {
        Dialect::Sqlite => text.to_string(),
        Dialect::Postgres => format!(r#"{text} collate "C""#),
    };
    let mut sql = format!("select {columns} from {table} where ");
    sql.push_str(match dialect {
        Dialect::Sqlite => "true",
        Dialect::Postgres => "agent_id = $1",
    });
    if kind == Kind::MemoryKeys {
        sql.push_str(" and key is not null");
    }
    if bounds.from.is_some() {
        sql.push_str(&format!(" and {text_order} >= {}", param()));
    }
    if bounds.below.is_some() {
        sql.push_str(&format!(" and {text_order} < {}", param()));
    }
    if bounds.since.is_some() {
        sql.push_str(&format!(" and {time} >= {}", param()));
    }
    let order = if kind.by_text() {
        text_order
    } else {
        "created_at, id".to_string()
    };
    let limit = match dialect {
        // SQLite's "no limit" is a negative one.
        Dialect::Sqlite => "coalesce(?, -1)".to_string(),
        Dialect::Postgres => param(),
    };
    sql.push_str(&format!(" order by {order} limit {limit}"));
    sql
}

/// Reads the key of a row of a [`Kind::MemoryKeys`] listing (`_whose` names the agent
/// for the other decoders' messages).
pub(crate) fn key_of<R: Row, W: ?Sized>(row: &R, _whose: &W) -> Result<String>
where
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    &'static str: ColumnIndex<R>,
{
    Ok(row.get("key"))
}

/// Adds the values of `bounds` to `args` in the order of [`statement`]'s parameters,
/// each time as `time` gives it (the form the database compares).
pub(crate) fn bind<A, Time>(
    args: &mut A,
    bounds: &Bounds,
    time: impl Fn(&DateTime<Utc>) -> Time,
) -> Result<()>
where
    A: Arguments,
    String: for<'t> Encode<'t, A::Database> + Type<A::Database>,
    Time: for<'t> Encode<'t, A::Database> + Type<A::Database>,
    Option<i64>: for<'t> Encode<'t, A::Database> + Type<A::Database>,
{
    let bind_err = |e| Error::invalid("listing", format!("cannot be bound: {e}"));
    for text in [&bounds.from, &bounds.below].into_iter().flatten() {
        args.add(text.clone()).map_err(bind_err)?;
    }
    if let Some(since) = &bounds.since {
        args.add(time(since)).map_err(bind_err)?;
    }
    args.add(bounds.limit).map_err(bind_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Listing;

    fn bounds(listing: Listing) -> Bounds {
        listing.bounds().unwrap().unwrap()
    }

    #[test]
    fn statements_bind_only_the_bounds_they_have() {
        let all = bounds(Listing::new());
        assert_eq!(
            statement(Kind::MemoryKeys, &all, Dialect::Sqlite),
            "select key from agent_memories where true and key is not null order by key \
             limit coalesce(?, -1)"
        );
        let some = bounds(Listing::new().prefix("a").since(crate::record::now()));
        assert_eq!(
            statement(Kind::Tools, &some, Dialect::Postgres),
            "select id, name, content, metadata, created_at, updated_at from agent_tools \
             where agent_id = $1 and name collate \"C\" >= $2 and name collate \"C\" < $3 \
             and updated_at >= $4 order by name collate \"C\" limit $5"
        );
        assert_eq!(
            statement(Kind::Executions, &some, Dialect::Sqlite),
            "select id, status, content, metadata, created_at from agent_executions \
             where true and status >= ? and status < ? and created_at >= ? \
             order by created_at, id limit coalesce(?, -1)"
        );
    }
}
