//! A legacy file's tables (which are data, which are skipped and why) and their rows, streamed in key order.

use sqlx::AssertSqlSafe;
use sqlx::sqlite::SqliteRow;

use super::open::{Source, file_error};
use super::value::SqlValue;
use crate::error::{Error, Result};

/// Suffixes of the shadow tables virtual-table modules create (`<vtab>_<suffix>`):
/// FTS5, FTS3/4 and R*Tree.
const SHADOW_SUFFIXES: &[&str] = &[
    "data", "idx", "content", "docsize", "config", "segments", "segdir", "stat", "node", "rowid",
    "parent",
];

/// One table of a legacy file.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// The table's name, exactly as in `sqlite_schema`.
    pub name: String,
    /// Data, or why it is skipped.
    pub kind: TableKind,
}

/// Whether a table holds data to migrate.
#[derive(Debug, Clone, PartialEq)]
pub enum TableKind {
    /// A table whose rows are data.
    Data {
        /// Its columns in order (generated columns included, hidden ones not).
        columns: Vec<String>,
        /// True for a `WITHOUT ROWID` table, whose rows are identified by their key.
        without_rowid: bool,
        /// The primary key's columns, in key order (empty for a rowid table without
        /// one).
        primary_key: Vec<String>,
    },
    /// Not data; the reason says why.
    Skipped {
        /// Why, e.g. `view: its rows are another table's`.
        reason: String,
    },
}

impl TableInfo {
    /// The skip reason, or `None` for a data table.
    pub fn skip_reason(&self) -> Option<&str> {
        match &self.kind {
            TableKind::Skipped { reason } => Some(reason),
            TableKind::Data { .. } => None,
        }
    }
}

/// One row as read: its rowid (`None` in a `WITHOUT ROWID` table) and its values in
/// column order.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// The rowid.
    pub rowid: Option<i64>,
    /// The values, in the table's column order.
    pub values: Vec<SqlValue>,
}

/// Quotes an identifier for SQLite.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Source {
    fn query_error(&self, what: String) -> impl FnOnce(sqlx::Error) -> Error + '_ {
        move |e| Error::Database {
            backend: "sqlite",
            operation: format!("{what} of {}", self.path.display()),
            source: Box::new(e),
        }
    }

    /// True when the file has a table named `name`.
    ///
    /// # Errors
    /// [`Error::Database`] when the schema cannot be read.
    pub async fn has_table(&mut self, name: &str) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("select 1 from sqlite_master where type = 'table' and name = ?")
                .bind(name)
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| file_error(&self.path, "has an unreadable schema", Box::new(e)))?;
        Ok(found.is_some())
    }

    /// Every table and view of the file, in schema order, with views, virtual tables,
    /// their shadow tables and SQLite's own tables marked as skipped, each with a reason.
    ///
    /// # Errors
    /// [`Error::SqliteFile`] or [`Error::Database`] when the schema cannot be read.
    pub async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        let entries: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "select type, name, sql from sqlite_master where type in ('table', 'view') order by rowid",
        )
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| file_error(&self.path, "has an unreadable schema", Box::new(e)))?;
        let virtuals: Vec<String> = entries
            .iter()
            .filter(|(_, _, sql)| is_virtual(sql.as_deref()))
            .map(|(_, name, _)| name.clone())
            .collect();
        let mut tables = Vec::new();
        for (kind, name, sql) in entries {
            let skip = if kind == "view" {
                Some("view: its rows are those of the tables it reads".to_string())
            } else if is_virtual(sql.as_deref()) {
                Some("virtual table: its rows come from a module and its shadow tables".into())
            } else if let Some(owner) = shadow_owner(&name, &virtuals) {
                Some(format!(
                    "shadow table of virtual table {owner:?}: index data, not rows"
                ))
            } else if name.to_ascii_lowercase().starts_with("sqlite_") {
                Some("SQLite's own bookkeeping (sqlite_sequence, sqlite_stat*), not data".into())
            } else {
                None
            };
            let kind = match skip {
                Some(reason) => TableKind::Skipped { reason },
                None => self.describe(&name, sql.as_deref()).await?,
            };
            tables.push(TableInfo { name, kind });
        }
        Ok(tables)
    }

    async fn describe(&mut self, table: &str, sql: Option<&str>) -> Result<TableKind> {
        let info: Vec<(String, i64, i64)> =
            sqlx::query_as("select name, pk, hidden from pragma_table_xinfo(?) order by cid")
                .bind(table)
                .fetch_all(&mut self.conn)
                .await
                .map_err(self.query_error(format!("list the columns of table {table:?}")))?;
        let columns: Vec<String> = info
            .iter()
            .filter(|(_, _, hidden)| *hidden != 1)
            .map(|(name, _, _)| name.clone())
            .collect();
        let mut pk: Vec<(i64, String)> = info
            .iter()
            .filter(|(_, pk, _)| *pk > 0)
            .map(|(name, pk, _)| (*pk, name.clone()))
            .collect();
        pk.sort();
        Ok(TableKind::Data {
            columns,
            without_rowid: is_without_rowid(sql.unwrap_or_default()),
            primary_key: pk.into_iter().map(|(_, name)| name).collect(),
        })
    }

    /// The number of rows in `table`.
    ///
    /// # Errors
    /// [`Error::Database`] when the table cannot be read.
    pub async fn count(&mut self, table: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "select count(*) from {}",
            quote(table)
        )))
        .fetch_one(&mut self.conn)
        .await
        .map_err(self.query_error(format!("count the rows of table {table:?}")))?;
        Ok(n.unsigned_abs())
    }

    /// The rows of a data table, in rowid order (primary key order in a `WITHOUT ROWID`
    /// table), [`ReadOptions::batch_size`](super::ReadOptions::batch_size) at a time.
    ///
    /// Each batch is one statement that continues after the last key read, so memory
    /// stays flat in the number of rows and no lock is held between batches.
    pub fn rows<'a>(&'a mut self, table: &'a TableInfo) -> RowBatches<'a> {
        RowBatches {
            source: self,
            table,
            last: None,
            done: false,
        }
    }
}

/// Batches of rows of one table; see [`Source::rows`].
#[derive(Debug)]
pub struct RowBatches<'a> {
    source: &'a mut Source,
    table: &'a TableInfo,
    /// The last key read: the rowid, or the primary key values.
    last: Option<Vec<SqlValue>>,
    done: bool,
}

impl RowBatches<'_> {
    /// The next batch, or `None` after the last row.
    ///
    /// # Errors
    /// [`Error::Database`] naming the file and table when a batch cannot be read, or
    /// [`Error::InvalidInput`] for a skipped table, or a rowid table whose `rowid`,
    /// `_rowid_` and `oid` are all column names (its rowid cannot be read).
    pub async fn next_batch(&mut self) -> Result<Option<Vec<SourceRow>>> {
        let TableKind::Data {
            columns,
            without_rowid,
            primary_key,
        } = &self.table.kind
        else {
            return Err(Error::invalid(
                "legacy table",
                format!(
                    "{:?} is skipped: {}",
                    self.table.name,
                    self.table.skip_reason().unwrap_or("")
                ),
            ));
        };
        if self.done {
            return Ok(None);
        }
        let keys: Vec<String> = if *without_rowid {
            primary_key.clone()
        } else {
            let alias = ["rowid", "_rowid_", "oid"]
                .into_iter()
                .find(|a| !columns.iter().any(|c| c.eq_ignore_ascii_case(a)))
                .ok_or_else(|| {
                    Error::invalid(
                        "legacy table",
                        format!(
                            "{:?} in {}: its columns hide the rowid (rowid, _rowid_ and oid are all column names)",
                            self.table.name,
                            self.source.path.display()
                        ),
                    )
                })?;
            vec![alias.to_string()]
        };
        let key_list = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let select_list = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "select {key_list}{}{select_list} from {}",
            if columns.is_empty() { "" } else { ", " },
            quote(&self.table.name)
        );
        if let Some(last) = &self.last {
            // TEXT is bound as its bytes cast back to TEXT, so invalid UTF-8 compares as
            // the same TEXT it was read from.
            let params = last
                .iter()
                .map(|v| match v {
                    SqlValue::Text(_) | SqlValue::InvalidText(_) => "cast(? as text)",
                    _ => "?",
                })
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(" where ({key_list}) > ({params})"));
        }
        sql.push_str(&format!(
            " order by {key_list} limit {}",
            self.source.options.batch_size.max(1)
        ));
        // Identifiers are quoted by `quote`; values are bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for v in self.last.iter().flatten() {
            query = match v {
                SqlValue::Null => query.bind(None::<i64>),
                SqlValue::Integer(i) => query.bind(*i),
                SqlValue::Real(f) => query.bind(*f),
                SqlValue::Text(s) => query.bind(s.as_bytes().to_vec()),
                SqlValue::InvalidText(b) | SqlValue::Blob(b) => query.bind(b.clone()),
            };
        }
        let table = &self.table.name;
        let path = self.source.path.clone();
        let rows: Vec<SqliteRow> =
            query
                .fetch_all(&mut self.source.conn)
                .await
                .map_err(|e| Error::Database {
                    backend: "sqlite",
                    operation: format!("read rows of table {table:?} of {}", path.display()),
                    source: Box::new(e),
                })?;
        if rows.len() < self.source.options.batch_size.max(1) {
            self.done = true;
        }
        let n_keys = keys.len();
        let mut batch = Vec::with_capacity(rows.len());
        for row in &rows {
            let read = |i| {
                SqlValue::read(row, i).map_err(|e| Error::Database {
                    backend: "sqlite",
                    operation: format!("read a value of table {table:?} of {}", path.display()),
                    source: Box::new(e),
                })
            };
            let key = (0..n_keys).map(read).collect::<Result<Vec<_>>>()?;
            let values = (n_keys..n_keys + columns.len())
                .map(read)
                .collect::<Result<Vec<_>>>()?;
            let rowid = match (without_rowid, key.first()) {
                (false, Some(SqlValue::Integer(id))) => Some(*id),
                _ => None,
            };
            self.last = Some(key);
            batch.push(SourceRow { rowid, values });
        }
        if batch.is_empty() {
            return Ok(None);
        }
        Ok(Some(batch))
    }
}

fn is_virtual(sql: Option<&str>) -> bool {
    sql.map(|s| {
        s.split_whitespace()
            .take(2)
            .map(str::to_ascii_lowercase)
            .eq(["create", "virtual"])
    })
    .unwrap_or(false)
}

fn shadow_owner<'a>(name: &str, virtuals: &'a [String]) -> Option<&'a str> {
    virtuals
        .iter()
        .find(|v| {
            name.len() > v.len() + 1
                && name
                    .get(..v.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(v))
                && name.as_bytes()[v.len()] == b'_'
                && SHADOW_SUFFIXES
                    .iter()
                    .any(|s| name[v.len() + 1..].eq_ignore_ascii_case(s))
        })
        .map(String::as_str)
}

/// A `CREATE TABLE` statement ends with `WITHOUT ROWID` (after its closing parenthesis,
/// possibly with `STRICT`), in any case and spacing.
fn is_without_rowid(sql: &str) -> bool {
    let Some(close) = sql.rfind(')') else {
        return false;
    };
    let tail: Vec<String> = sql[close + 1..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    tail.windows(2)
        .any(|w| w[0] == "without" && w[1] == "rowid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rowid_is_read_from_the_statement() {
        assert!(is_without_rowid(
            "CREATE TABLE t(k PRIMARY KEY, v) WITHOUT ROWID"
        ));
        assert!(is_without_rowid(
            "create table t(k primary key) strict, without\n rowid"
        ));
        assert!(!is_without_rowid(
            "CREATE TABLE t(\"without rowid\" PRIMARY KEY)"
        ));
        assert!(!is_without_rowid("CREATE TABLE t(k)"));
    }

    #[test]
    fn shadow_tables_belong_to_their_virtual_table() {
        let v = vec!["fts".to_string()];
        assert_eq!(shadow_owner("fts_data", &v), Some("fts"));
        assert_eq!(shadow_owner("FTS_Config", &v), Some("fts"));
        assert_eq!(shadow_owner("fts_notes", &v), None);
        assert_eq!(shadow_owner("fts", &v), None);
        assert!(is_virtual(Some("CREATE  VIRTUAL TABLE x USING fts5(a)")));
        assert!(!is_virtual(Some("CREATE TABLE x(a)")));
    }
}
