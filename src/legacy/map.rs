//! Which legacy tables go where, and how: the maps an operator writes (`--map`,
//! `--exclude`), what each says per table ([`TableSpec`]), the check that every map
//! meets a table, and a suggested map for a table nothing maps.
//!
//! # The map syntax
//!
//! One map is one string, parts separated by `;`:
//!
//! ```text
//! TABLE=TARGET[;key=COLUMN[+COLUMN...]|none][;sep=TEXT][;time=COLUMN|none][;json][;files=GLOB]
//! ```
//!
//! - `TABLE` is a table name, matched without regard to ASCII case (as SQLite matches
//!   table names). `TARGET` is `memories`, `tools`, `metrics`, `executions` or the full
//!   `agent_*` name; it may be left out (`memory;time=ts`) for a contract table name,
//!   whose target is then the contract's.
//! - `key=` names the columns of the target's typed column: a memory's `key`, a tool's
//!   or metric's `name`, an execution's `status` (`name=` and `status=` are the same
//!   option). Several columns are joined with `sep` (default `/`): `key=prefix+key` gives
//!   `users.alice/food`. A NULL in any of them leaves the typed column empty (a tool or
//!   metric then gets the fallback name `<table>:<rowid>`). Numbers are written as JSON
//!   writes them, BLOBs and text holding NUL as the JSON text of their `$base64` form.
//!   `key=none`: no key (memories) or the fallback name. Without `key=`, the column
//!   named `key`, `name` or `status` is used, as the contract says. A joined key is one
//!   value per row only when `sep` appears in no value but the last one's; rows that
//!   still share a key arrive as the contract says for shared keys.
//! - `time=COLUMN` reads the row's time from that column only (instead of the contract's
//!   `created_at`, `timestamp`, ...), by the contract's rules, and also from a UUID of
//!   version 1, 6 or 7 (which holds its creation time, as LangGraph's `checkpoint_id`
//!   does). A NULL there, or `time=none`, gives the migration time.
//! - `json`: a BLOB holding exactly one JSON document as UTF-8 text, nothing around it,
//!   moves as that JSON, byte for byte, instead of `{"$base64": ...}`. Any other BLOB
//!   (not UTF-8, not JSON, with whitespace around it, or a JSON object that would read as
//!   one of the contract's tagged forms, `{"$base64": ...}` or `{"$float": ...}`) moves
//!   as `$base64` as always.
//! - `files=GLOB` limits the map to files whose path relative to the agents path
//!   matches: `*` matches within one folder name, `**` across folders, `?` one
//!   character; a pattern without `/` is matched against the file's name alone
//!   (`files=graph.db`, `files=langgraph*.sqlite`), one with `/` against the whole path
//!   (`files=*/graph.db`, `files=crawler/**`).
//!
//! A name or value holding `=`, `;`, `+`, `"` or spaces at its ends is written in double
//! quotes, with `""` for a quote inside: `--map '"a=b"=memories'` maps the table `a=b`,
//! `key="none"` names a column called `none`.
//!
//! `--exclude` takes the same syntax without a target: `TABLE`, `TABLE;files=GLOB`, or
//! `files=GLOB` for every table of the files that match.
//!
//! Maps are tried in the order given, the first that matches a table wins, and an
//! exclude wins over every map; tables no map matches go where the contract says.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::discover::{Probe, find};
use super::open::{ReadOptions, Source};
use super::read::{SourceRow, TableInfo, TableKind};
use super::time::{TIME_COLUMNS, parse_time_value};
use super::value::SqlValue;
use super::{Target, contract_target};
use crate::error::{Error, Result};

/// The separator of a key joined from several columns, unless the map names another.
pub const DEFAULT_SEPARATOR: &str = "/";

/// How the rows of one legacy table move: the contract table they go to, and what a
/// map says about their key, time and BLOBs. Serialized as the JSON the backfill keeps
/// per table (options left at their default are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    /// The contract table.
    pub target: Target,
    /// Which columns give the typed key, name or status.
    #[serde(default, skip_serializing_if = "KeyRule::is_default")]
    pub key: KeyRule,
    /// Which column gives the row's time.
    #[serde(default, skip_serializing_if = "TimeRule::is_default")]
    pub time: TimeRule,
    /// BLOBs holding UTF-8 JSON move as JSON.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json_blobs: bool,
}

impl From<Target> for TableSpec {
    fn from(target: Target) -> Self {
        TableSpec {
            target,
            key: KeyRule::Default,
            time: TimeRule::Default,
            json_blobs: false,
        }
    }
}

/// Where a memory's key (a tool's or metric's name, an execution's status) comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRule {
    /// The contract's column: `key`, `name` or `status`, by the target.
    #[default]
    Default,
    /// No key (a tool or metric gets its fallback name).
    None,
    /// These columns' values, joined with `separator`.
    Columns {
        /// The columns, in order.
        columns: Vec<String>,
        /// What joins them.
        separator: String,
    },
}

impl KeyRule {
    fn is_default(&self) -> bool {
        *self == KeyRule::Default
    }
}

/// Where a row's time comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeRule {
    /// The contract's time columns (`created_at`, `timestamp`, ...), the first present
    /// and not NULL.
    #[default]
    Default,
    /// None: the migration time.
    None,
    /// The first of these columns that is not NULL (also a UUID v1, v6 or v7 there).
    Columns(Vec<String>),
}

impl TimeRule {
    fn is_default(&self) -> bool {
        *self == TimeRule::Default
    }
}

/// Whether a table moves, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It moves by this spec.
    Mapped(TableSpec),
    /// An `--exclude` (shown as written) leaves it out on purpose.
    Excluded(String),
    /// Neither a contract name, nor mapped, nor excluded.
    Unmapped,
}

/// One `--map`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapRule {
    table: String,
    /// `None` when left out: the contract's target of `table`.
    target: Option<Target>,
    key: KeyRule,
    time: TimeRule,
    json: bool,
    files: Option<String>,
}

/// One `--exclude`: a table (in the files that match), or every table of the files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExcludeRule {
    table: Option<String>,
    files: Option<String>,
}

/// Which legacy tables go where: the contract's names, plus the maps and excludes a
/// caller gives (see the module docs for their syntax).
///
/// It serializes as `{"maps": [...], "excludes": [...]}`, each as its text, which
/// reads back to the same map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableMap {
    maps: Vec<MapRule>,
    excludes: Vec<ExcludeRule>,
}

impl TableMap {
    /// The contract's mapping only.
    pub fn new() -> Self {
        TableMap::default()
    }

    /// Adds `table` -> `target`, for every file; a map overrides a built-in one.
    pub fn with(mut self, table: impl Into<String>, target: Target) -> Self {
        self.maps.push(MapRule {
            table: table.into(),
            target: Some(target),
            key: KeyRule::Default,
            time: TimeRule::Default,
            json: false,
            files: None,
        });
        self
    }

    /// Adds one map written in the map syntax (`store=memories;key=prefix+key`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming what in `text` is wrong.
    pub fn with_map(mut self, text: &str) -> Result<Self> {
        self.maps.push(parse_map(text)?);
        Ok(self)
    }

    /// Adds one exclude: `TABLE`, `TABLE;files=GLOB` or `files=GLOB`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming what in `text` is wrong.
    pub fn with_exclude(mut self, text: &str) -> Result<Self> {
        self.excludes.push(parse_exclude(text)?);
        Ok(self)
    }

    /// True when it holds no map and no exclude (only the contract's names apply).
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty() && self.excludes.is_empty()
    }

    /// The maps, each as text in the map syntax.
    pub fn maps(&self) -> Vec<String> {
        self.maps.iter().map(ToString::to_string).collect()
    }

    /// The excludes, each as text.
    pub fn excludes(&self) -> Vec<String> {
        self.excludes.iter().map(ToString::to_string).collect()
    }

    /// How table `table` of file `source_db` (relative to the agents path) moves, or
    /// `None` when it is not mapped or is excluded.
    pub fn spec(&self, source_db: &str, table: &str) -> Option<TableSpec> {
        match self.decide(source_db, table) {
            Decision::Mapped(spec) => Some(spec),
            Decision::Excluded(_) | Decision::Unmapped => None,
        }
    }

    /// Whether table `table` of file `source_db` moves: an exclude first, then the maps
    /// in order, then the contract's names.
    pub fn decide(&self, source_db: &str, table: &str) -> Decision {
        if let Some(rule) = self.excludes.iter().find(|r| {
            r.table.as_deref().is_none_or(|t| same_table(t, table))
                && r.files
                    .as_deref()
                    .is_none_or(|g| file_matches(g, source_db))
        }) {
            return Decision::Excluded(rule.to_string());
        }
        if let Some(rule) = self.maps.iter().find(|r| r.matches(source_db, table)) {
            // A rule without a target only parses for a contract name.
            if let Some(target) = rule.target.or_else(|| contract_target(&rule.table)) {
                return Decision::Mapped(TableSpec {
                    target,
                    key: rule.key.clone(),
                    time: rule.time.clone(),
                    json_blobs: rule.json,
                });
            }
        }
        contract_target(table).map_or(Decision::Unmapped, |t| Decision::Mapped(t.into()))
    }

    /// The target of a legacy table in any file: a map without `files=` first, then
    /// the contract's name.
    pub fn target(&self, table: &str) -> Option<Target> {
        self.maps
            .iter()
            .filter(|r| r.files.is_none() && same_table(&r.table, table))
            .find_map(|r| r.target.or_else(|| contract_target(&r.table)))
            .or_else(|| contract_target(table))
    }

    /// Checks the maps against the tables found (`files`, from [`survey`]): every map
    /// and exclude must meet at least one table (or file), and the columns a map names
    /// must be in every table it meets. Also lists the tables that are neither mapped
    /// nor excluded, for `--strict`.
    pub fn check(&self, files: &[SurveyFile]) -> MapCheck {
        let mut check = MapCheck::default();
        let tables = || {
            files.iter().flat_map(|f| {
                f.tables
                    .iter()
                    .filter(|t| t.skip_reason().is_none())
                    .map(move |t| (f, t))
            })
        };
        for rule in &self.maps {
            let met: Vec<_> = tables()
                .filter(|(f, t)| rule.matches(&f.source_db, &t.name))
                .collect();
            if met.is_empty() {
                check.problems.push(format!(
                    "--map {:?} matches no table{}; the tables found are: {}",
                    rule.to_string(),
                    rule.files
                        .as_deref()
                        .map(|g| format!(" in files matching {g:?}"))
                        .unwrap_or_default(),
                    table_names(files)
                ));
            }
            for (file, table) in met {
                let TableKind::Data { columns, .. } = &table.kind else {
                    continue;
                };
                for column in rule.columns() {
                    if !columns.iter().any(|c| c.eq_ignore_ascii_case(column)) {
                        check.problems.push(format!(
                            "--map {:?}: table {:?} of {} has no column {column:?} (its columns: {})",
                            rule.to_string(),
                            table.name,
                            file.source_db,
                            columns.join(", ")
                        ));
                    }
                }
            }
        }
        for rule in &self.excludes {
            let met = match &rule.table {
                Some(_) => tables().any(|(f, t)| {
                    rule.table.as_deref().is_none_or(|n| same_table(n, &t.name))
                        && rule
                            .files
                            .as_deref()
                            .is_none_or(|g| file_matches(g, &f.source_db))
                }),
                None => files.iter().any(|f| {
                    rule.files
                        .as_deref()
                        .is_none_or(|g| file_matches(g, &f.source_db))
                }),
            };
            if !met {
                check.problems.push(format!(
                    "--exclude {:?} matches {}; the tables found are: {}",
                    rule.to_string(),
                    if rule.table.is_some() {
                        "no table"
                    } else {
                        "no file"
                    },
                    table_names(files)
                ));
            }
        }
        for (file, table) in tables() {
            if self.decide(&file.source_db, &table.name) == Decision::Unmapped {
                check
                    .unmapped
                    .push((file.source_db.clone(), table.name.clone()));
            }
        }
        check
    }
}

/// The distinct data table names of `files`, with how many files hold each.
fn table_names(files: &[SurveyFile]) -> String {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for file in files {
        for table in file.tables.iter().filter(|t| t.skip_reason().is_none()) {
            *names.entry(&table.name).or_default() += 1;
        }
    }
    if names.is_empty() {
        return "none".into();
    }
    names
        .into_iter()
        .map(|(name, n)| match n {
            1 => quote_word(name),
            n => format!("{} ({n} files)", quote_word(name)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`TableMap::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapCheck {
    /// Maps and excludes that meet nothing, or name a column a table lacks; one line
    /// each. A run must not start with any.
    pub problems: Vec<String>,
    /// `(source_db, table)` of every data table neither mapped nor excluded.
    pub unmapped: Vec<(String, String)>,
}

/// One legacy file's tables, as [`survey`] found them.
#[derive(Debug, Clone, PartialEq)]
pub struct SurveyFile {
    /// The file relative to the agents path, `/`-separated.
    pub source_db: String,
    /// Its tables.
    pub tables: Vec<TableInfo>,
}

/// Lists the tables of every legacy file under `agents_path` (files of the library's own
/// layout and files that cannot be read are left out: no map applies to them), reading
/// only their schemas.
pub async fn survey(agents_path: &Path, options: &ReadOptions) -> Vec<SurveyFile> {
    let mut files = Vec::new();
    for found in find(agents_path) {
        if found.probe != Probe::Unopened {
            continue;
        }
        let Ok(mut source) = Source::open(&found.path, options).await else {
            continue;
        };
        if !matches!(source.probe().await, Ok(Probe::Legacy)) {
            continue;
        }
        if let Ok(tables) = source.tables().await {
            files.push(SurveyFile {
                source_db: found.source_db.clone(),
                tables,
            });
        }
    }
    files
}

impl MapRule {
    fn matches(&self, source_db: &str, table: &str) -> bool {
        same_table(&self.table, table)
            && self
                .files
                .as_deref()
                .is_none_or(|g| file_matches(g, source_db))
    }

    /// The columns it names.
    fn columns(&self) -> Vec<&str> {
        let mut columns = Vec::new();
        if let KeyRule::Columns { columns: key, .. } = &self.key {
            columns.extend(key.iter().map(String::as_str));
        }
        if let TimeRule::Columns(time) = &self.time {
            columns.extend(time.iter().map(String::as_str));
        }
        columns
    }
}

/// Table names as SQLite compares them: without regard to ASCII case.
fn same_table(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// True when `pattern` matches the file `source_db` (relative, `/`-separated): the
/// whole path for a pattern with `/`, the file's name for one without.
pub fn file_matches(pattern: &str, source_db: &str) -> bool {
    let subject = match pattern.contains('/') {
        true => source_db,
        false => source_db.rsplit('/').next().unwrap_or(source_db),
    };
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = subject.chars().collect();
    glob(&p, &s)
}

fn glob(p: &[char], s: &[char]) -> bool {
    match p {
        [] => s.is_empty(),
        ['*', '*', '/', rest @ ..] => {
            // `**/` matches no folder, or any number of them.
            glob(rest, s)
                || (0..s.len())
                    .filter(|&i| s[i] == '/')
                    .any(|i| glob(rest, &s[i + 1..]))
        }
        ['*', '*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        ['*', rest @ ..] => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != '/')
            .any(|i| glob(rest, &s[i..])),
        ['?', rest @ ..] => s.first().is_some_and(|c| *c != '/') && glob(rest, &s[1..]),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

// ---- the syntax ----

/// One piece of a map's text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word { text: String, quoted: bool },
    Eq,
    Semi,
    Plus,
}

fn invalid(what: &'static str, text: &str, reason: impl fmt::Display) -> Error {
    Error::invalid(what, format!("{text:?}: {reason}"))
}

fn tokens(text: &str, what: &'static str) -> Result<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<Token>| {
        let trimmed = word.trim();
        if !trimmed.is_empty() {
            out.push(Token::Word {
                text: trimmed.to_string(),
                quoted: false,
            });
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '=' | ';' | '+' => {
                flush(&mut word, &mut out);
                out.push(match c {
                    '=' => Token::Eq,
                    ';' => Token::Semi,
                    _ => Token::Plus,
                });
            }
            '"' if word.trim().is_empty() => {
                word.clear();
                let mut quoted = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            quoted.push('"');
                        }
                        Some('"') => break,
                        Some(c) => quoted.push(c),
                        None => return Err(invalid(what, text, "a quote is not closed")),
                    }
                }
                out.push(Token::Word {
                    text: quoted,
                    quoted: true,
                });
                // Only spaces may follow a closing quote before the next separator.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if chars.peek().is_some_and(|c| !matches!(c, '=' | ';' | '+')) {
                    return Err(invalid(
                        what,
                        text,
                        "text after a closing quote (write a quote inside quotes as \"\")",
                    ));
                }
            }
            '"' => {
                return Err(invalid(
                    what,
                    text,
                    "a quote inside a name: quote the whole name, with \"\" for each quote in it",
                ));
            }
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    Ok(out)
}

/// The parts of a map's text between `;`, each a list of tokens.
fn parts(text: &str, what: &'static str) -> Result<Vec<Vec<Token>>> {
    let mut parts = vec![Vec::new()];
    for token in tokens(text, what)? {
        match token {
            Token::Semi => parts.push(Vec::new()),
            token => parts.last_mut().expect("one part at least").push(token),
        }
    }
    Ok(parts.into_iter().filter(|p| !p.is_empty()).collect())
}

fn word(token: &Token) -> Option<(&str, bool)> {
    match token {
        Token::Word { text, quoted } => Some((text, *quoted)),
        _ => None,
    }
}

/// `NAME=VALUE` (or a lone `NAME`) of one option part.
fn option<'a>(part: &'a [Token], what: &'static str, text: &str) -> Result<(&'a str, &'a [Token])> {
    match part {
        [
            Token::Word {
                text: name,
                quoted: false,
            },
            Token::Eq,
            value @ ..,
        ] => Ok((name, value)),
        [
            Token::Word {
                text: name,
                quoted: false,
            },
        ] => Ok((name, &[])),
        _ => Err(invalid(
            what,
            text,
            "an option is NAME=VALUE or a flag such as json",
        )),
    }
}

fn single<'a>(
    value: &'a [Token],
    name: &str,
    what: &'static str,
    text: &str,
) -> Result<(&'a str, bool)> {
    match value {
        [token] => word(token).ok_or_else(|| invalid(what, text, format!("{name}= needs a value"))),
        [] => Err(invalid(what, text, format!("{name}= needs a value"))),
        _ => Err(invalid(
            what,
            text,
            format!("{name}= takes one value (quote it if it holds = ; or +)"),
        )),
    }
}

/// `COLUMN[+COLUMN...]`: each name, and whether it was quoted.
fn column_list(value: &[Token], name: &str, text: &str) -> Result<Vec<(String, bool)>> {
    let wrong = || {
        invalid(
            "--map",
            text,
            format!("{name}= is COLUMN[+COLUMN...] or none"),
        )
    };
    let mut names = Vec::new();
    let mut expect_word = true;
    for token in value {
        match (token, expect_word) {
            (Token::Word { text, quoted }, true) => {
                names.push((text.clone(), *quoted));
                expect_word = false;
            }
            (Token::Plus, false) => expect_word = true,
            _ => return Err(wrong()),
        }
    }
    if names.is_empty() || expect_word {
        return Err(wrong());
    }
    Ok(names)
}

fn parse_map(text: &str) -> Result<MapRule> {
    const WHAT: &str = "--map";
    let parts = parts(text, WHAT)?;
    let Some((head, options)) = parts.split_first() else {
        return Err(invalid(
            WHAT,
            text,
            "empty; write TABLE=TARGET[;key=...][;time=...][;json][;files=GLOB]",
        ));
    };
    let (table, target) = match head.as_slice() {
        [t] => (word(t), None),
        [t, Token::Eq, target] => (word(t), word(target).map(|(w, _)| w)),
        _ => (None, None),
    };
    let Some((table, _)) = table else {
        return Err(invalid(
            WHAT,
            text,
            "it does not start with TABLE=TARGET (quote a table name holding = ; or +)",
        ));
    };
    let target = match target {
        Some(name) => Some(Target::parse(name).ok_or_else(|| {
            invalid(
                WHAT,
                text,
                format!("{name:?} is not a contract table: use memories, tools, metrics or executions (or agent_memories, ...)"),
            )
        })?),
        None if head.len() == 1 && contract_target(table).is_some() => None,
        None => {
            return Err(invalid(
                WHAT,
                text,
                format!("no target for {table:?}: write {table}=memories (or tools, metrics, executions)"),
            ));
        }
    };
    let mut rule = MapRule {
        table: table.to_string(),
        target,
        key: KeyRule::Default,
        time: TimeRule::Default,
        json: false,
        files: None,
    };
    let mut columns: Option<Vec<String>> = None;
    let mut separator: Option<String> = None;
    let mut seen = HashSet::new();
    for part in options {
        let (name, value) = option(part, WHAT, text)?;
        let canonical = match name {
            "name" | "status" => "key",
            other => other,
        };
        if !seen.insert(canonical) {
            return Err(invalid(WHAT, text, format!("{name}= is given twice")));
        }
        match name {
            "key" | "name" | "status" => match column_list(value, name, text)?.as_slice() {
                [(none, false)] if none == "none" => rule.key = KeyRule::None,
                names => columns = Some(names.iter().map(|(n, _)| n.clone()).collect()),
            },
            "sep" => separator = Some(single(value, name, WHAT, text)?.0.to_string()),
            "time" => match column_list(value, name, text)?.as_slice() {
                [(none, false)] if none == "none" => rule.time = TimeRule::None,
                names => {
                    rule.time = TimeRule::Columns(names.iter().map(|(n, _)| n.clone()).collect());
                }
            },
            "json" if value.is_empty() => rule.json = true,
            "files" => rule.files = Some(single(value, name, WHAT, text)?.0.to_string()),
            other => {
                return Err(invalid(
                    WHAT,
                    text,
                    format!(
                        "unknown option {other:?}: the options are key=, name=, status=, sep=, time=, json, files="
                    ),
                ));
            }
        }
    }
    match (columns, separator) {
        (Some(columns), separator) => {
            rule.key = KeyRule::Columns {
                columns,
                separator: separator.unwrap_or_else(|| DEFAULT_SEPARATOR.into()),
            };
        }
        (None, Some(_)) => return Err(invalid(WHAT, text, "sep= needs key=COLUMN+COLUMN")),
        (None, None) => {}
    }
    Ok(rule)
}

fn parse_exclude(text: &str) -> Result<ExcludeRule> {
    const WHAT: &str = "--exclude";
    let parts = parts(text, WHAT)?;
    let mut rule = ExcludeRule {
        table: None,
        files: None,
    };
    for (i, part) in parts.iter().enumerate() {
        match part.as_slice() {
            [
                Token::Word {
                    text: files,
                    quoted: false,
                },
                Token::Eq,
                value @ ..,
            ] if files == "files" => {
                if rule.files.is_some() {
                    return Err(invalid(WHAT, text, "files= is given twice"));
                }
                rule.files = Some(single(value, "files", WHAT, text)?.0.to_string());
            }
            [table] if i == 0 => rule.table = word(table).map(|(w, _)| w.to_string()),
            _ => {
                return Err(invalid(
                    WHAT,
                    text,
                    "an exclude is TABLE, TABLE;files=GLOB or files=GLOB (quote a table name holding = ; or +)",
                ));
            }
        }
    }
    if rule.table.is_none() && rule.files.is_none() {
        return Err(invalid(WHAT, text, "empty"));
    }
    Ok(rule)
}

/// A name or value as the syntax writes it: in quotes when it needs them.
fn quote_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text.trim() == text
        && !text.contains(['=', ';', '+', '"'])
        && text != "none";
    match plain {
        true => text.to_string(),
        false => format!("\"{}\"", text.replace('"', "\"\"")),
    }
}

fn short_target(target: Target) -> &'static str {
    match target {
        Target::Memories => "memories",
        Target::Tools => "tools",
        Target::Metrics => "metrics",
        Target::Executions => "executions",
    }
}

/// Writes one map's options after its head.
fn write_options(
    f: &mut fmt::Formatter<'_>,
    target: Option<Target>,
    key: &KeyRule,
    time: &TimeRule,
    json: bool,
    files: Option<&str>,
) -> fmt::Result {
    let option = match target {
        Some(Target::Tools | Target::Metrics) => "name",
        Some(Target::Executions) => "status",
        Some(Target::Memories) | None => "key",
    };
    let list = |columns: &[String]| {
        let columns: Vec<String> = columns.iter().map(|c| quote_word(c)).collect();
        columns.join("+")
    };
    match key {
        KeyRule::Default => {}
        KeyRule::None => write!(f, ";{option}=none")?,
        KeyRule::Columns { columns, separator } => {
            write!(f, ";{option}={}", list(columns))?;
            if separator != DEFAULT_SEPARATOR {
                write!(f, ";sep={}", quote_word(separator))?;
            }
        }
    }
    match time {
        TimeRule::Default => {}
        TimeRule::None => f.write_str(";time=none")?,
        TimeRule::Columns(c) => write!(f, ";time={}", list(c))?,
    }
    if json {
        f.write_str(";json")?;
    }
    if let Some(files) = files {
        write!(f, ";files={}", quote_word(files))?;
    }
    Ok(())
}

impl fmt::Display for MapRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote_word(&self.table))?;
        if let Some(target) = self.target {
            write!(f, "={}", short_target(target))?;
        }
        let target = self.target.or_else(|| contract_target(&self.table));
        write_options(
            f,
            target,
            &self.key,
            &self.time,
            self.json,
            self.files.as_deref(),
        )
    }
}

impl fmt::Display for ExcludeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.table, &self.files) {
            (Some(t), Some(g)) => write!(f, "{};files={}", quote_word(t), quote_word(g)),
            (Some(t), None) => f.write_str(&quote_word(t)),
            (None, Some(g)) => write!(f, "files={}", quote_word(g)),
            (None, None) => Ok(()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct MapText {
    #[serde(default)]
    maps: Vec<String>,
    #[serde(default)]
    excludes: Vec<String>,
}

impl Serialize for TableMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        MapText {
            maps: self.maps(),
            excludes: self.excludes(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TableMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = MapText::deserialize(deserializer)?;
        let mut map = TableMap::new();
        for m in &text.maps {
            map = map.with_map(m).map_err(serde::de::Error::custom)?;
        }
        for e in &text.excludes {
            map = map.with_exclude(e).map_err(serde::de::Error::custom)?;
        }
        Ok(map)
    }
}

// ---- a row's key and time by its spec ----

/// The time held by a UUID of version 1, 6 or 7 written as text.
pub(crate) fn uuid_time(value: &SqlValue) -> Option<DateTime<Utc>> {
    let SqlValue::Text(text) = value else {
        return None;
    };
    let uuid = uuid::Uuid::parse_str(text.trim()).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// The row's time by a map's `time=COLUMN`: the contract's rules, else a UUID's time.
pub(crate) fn time_of(value: &SqlValue) -> std::result::Result<DateTime<Utc>, String> {
    parse_time_value(value).or_else(|reason| uuid_time(value).ok_or(reason))
}

/// The JSON text a BLOB holds, when it holds exactly one JSON document as UTF-8 (with
/// nothing around it) that is not one of the contract's tagged forms.
pub(crate) fn blob_json(bytes: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.trim() != text || text.is_empty() {
        return None;
    }
    let raw = serde_json::value::RawValue::from_string(text.to_string()).ok()?;
    if raw.get() != text {
        return None;
    }
    // A one-member object tagged `$base64` or `$float` would read as a converted value.
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text)
        && map.len() == 1
        && map.keys().any(|k| k == "$base64" || k == "$float")
    {
        return None;
    }
    Some(raw)
}

// ---- suggestions ----

/// What a reader noticed in one column's values, for [`suggest`].
#[derive(Debug, Clone, Default)]
struct ColumnSeen {
    values: u64,
    numbers: u64,
    integers: u64,
    blobs: u64,
    json_blobs: u64,
    times: u64,
    uuid_times: u64,
    /// Distinct texts, for a column that could be a key (`None` once a repeat is seen).
    distinct: Option<HashSet<String>>,
    nulls: u64,
}

/// What a reader noticed in a table's rows (optional input to [`suggest`]): per column,
/// which values are numbers, times, JSON BLOBs, and whether a key-like column repeats.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    rows: u64,
    columns: Vec<(String, ColumnSeen)>,
}

impl Observed {
    /// For a table with these columns.
    pub fn new(table: &TableInfo) -> Self {
        let columns = match &table.kind {
            TableKind::Data { columns, .. } => columns.clone(),
            TableKind::Skipped { .. } => Vec::new(),
        };
        Observed {
            rows: 0,
            columns: columns
                .into_iter()
                .map(|c| {
                    let distinct = key_like(&c).then(HashSet::new);
                    (
                        c,
                        ColumnSeen {
                            distinct,
                            ..ColumnSeen::default()
                        },
                    )
                })
                .collect(),
        }
    }

    /// Rows seen.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Notes one row.
    pub fn see(&mut self, row: &SourceRow) {
        self.rows += 1;
        for ((_, seen), value) in self.columns.iter_mut().zip(&row.values) {
            if *value == SqlValue::Null {
                seen.nulls += 1;
                seen.distinct = None;
                continue;
            }
            seen.values += 1;
            match value {
                SqlValue::Integer(_) => {
                    seen.numbers += 1;
                    seen.integers += 1;
                }
                SqlValue::Real(_) => seen.numbers += 1,
                SqlValue::Blob(b) => {
                    seen.blobs += 1;
                    seen.json_blobs += u64::from(blob_json(b).is_some());
                }
                _ => {}
            }
            if uuid_time(value).is_some() {
                seen.uuid_times += 1;
            } else if parse_time_value(value).is_ok() {
                seen.times += 1;
            }
            if let Some(distinct) = &mut seen.distinct
                && !distinct.insert(value.typed_text().unwrap_or_default())
            {
                seen.distinct = None;
            }
        }
    }

    fn column(&self, name: &str) -> Option<&ColumnSeen> {
        self.columns
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(name))
            .map(|(_, s)| s)
    }
}

/// Columns whose repeats decide whether they can be a key alone.
fn key_like(column: &str) -> bool {
    ["key", "name"]
        .iter()
        .any(|k| column.eq_ignore_ascii_case(k))
}

/// A suggested map for a table nothing maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// Where its rows would go.
    pub target: Target,
    /// The map, in the map syntax, limited to files of this file's name.
    pub map: String,
}

impl Suggestion {
    /// The command-line argument that applies it, quoted for a POSIX shell.
    pub fn argument(&self) -> String {
        format!("--map '{}'", self.map.replace('\'', "'\\''"))
    }
}

/// Suggests a map for table `table` of file `source_db` from its columns (and, when a
/// reader saw its rows, from `seen`): key- and value-like columns go to memories, a
/// numeric `value` to metrics, a `name` to tools, a `status` or `event` to executions,
/// anything else to memories; the key from a unique `key` column, else the primary key;
/// the time from `updated_at` (memories and tools, whose version it is), the contract's
/// time columns, or another column that holds times or time-holding UUIDs; `json` when
/// a BLOB holds JSON. `None` for a table that is not data.
pub fn suggest(source_db: &str, table: &TableInfo, seen: Option<&Observed>) -> Option<Suggestion> {
    let TableKind::Data {
        columns,
        primary_key,
        ..
    } = &table.kind
    else {
        return None;
    };
    let has = |name: &str| columns.iter().find(|c| c.eq_ignore_ascii_case(name));
    let stat = |name: &str| seen.and_then(|s| s.column(name));
    let value_like = [
        "value",
        "content",
        "memory",
        "data",
        "text",
        "message",
        "state_json",
    ]
    .iter()
    .any(|c| has(c).is_some());
    // An INTEGER primary key of one column is the rowid: not a key worth keeping.
    let rowid_alias = |c: &str| {
        primary_key.len() == 1
            && stat(c).map_or(c.eq_ignore_ascii_case("id"), |s| s.integers == s.values)
    };
    let text_key: Vec<String> = primary_key
        .iter()
        .filter(|c| !rowid_alias(c))
        .cloned()
        .collect();
    let numeric_value = stat("value").is_some_and(|s| s.values > 0 && s.numbers == s.values);
    let unique = |c: &str| stat(c).is_some_and(|s| s.distinct.is_some());
    // A `name` that repeats or is missing names a speaker or a label, not a tool.
    let names_things = has("name").is_some_and(|n| seen.is_none() || unique(n));
    let chat = has("role").is_some() && has("content").is_some();
    let target = if (has("key").is_some() && value_like) || chat {
        Target::Memories
    } else if numeric_value && has("name").is_some() {
        Target::Metrics
    } else if names_things {
        Target::Tools
    } else if has("status").is_some() || has("event").is_some() {
        Target::Executions
    } else {
        Target::Memories
    };
    let columns_of = |columns: Vec<String>| KeyRule::Columns {
        columns,
        separator: DEFAULT_SEPARATOR.into(),
    };
    let key = match target {
        Target::Memories => match has("key") {
            // LangGraph's store: a key unique per namespace.
            Some(k) if primary_key.len() > 1 && primary_key.contains(k) => {
                columns_of(primary_key.clone())
            }
            Some(k) if unique(k) || seen.is_none() => columns_of(vec![k.clone()]),
            // A key shared by many rows (a conversation's messages): with the row's own.
            Some(k) => match primary_key.as_slice() {
                [] => KeyRule::None,
                pk => columns_of(
                    std::iter::once(k.clone())
                        .chain(pk.iter().cloned())
                        .collect(),
                ),
            },
            None if !text_key.is_empty() => columns_of(text_key.clone()),
            None => KeyRule::None,
        },
        Target::Tools => match has("name") {
            Some(_) => KeyRule::Default,
            None if !text_key.is_empty() => columns_of(text_key.clone()),
            None => KeyRule::Default,
        },
        Target::Metrics => KeyRule::Default,
        Target::Executions => match (has("status"), has("event")) {
            (None, Some(e)) => columns_of(vec![e.clone()]),
            _ => KeyRule::Default,
        },
    };
    let holds_times =
        |c: &str| stat(c).is_none_or(|s| s.values > 0 && s.times + s.uuid_times == s.values);
    let default_time = TIME_COLUMNS.iter().find_map(|t| has(t));
    let versioned = matches!(target, Target::Memories | Target::Tools);
    let time = if let Some(updated) = has("updated_at").filter(|c| versioned && holds_times(c)) {
        // Where it can be NULL, the creation time stands in.
        match (
            has("created_at"),
            stat(updated).is_some_and(|s| s.nulls > 0),
        ) {
            (Some(created), true) => TimeRule::Columns(vec![updated.clone(), created.clone()]),
            _ => TimeRule::Columns(vec![updated.clone()]),
        }
    } else if default_time.is_some() {
        TimeRule::Default
    } else if let Some(c) = columns.iter().find(|c| {
        let lower = c.to_ascii_lowercase();
        let named = ["_ts", "_at", "time", "date", "timestamp"]
            .iter()
            .any(|end| lower.ends_with(end));
        named && holds_times(c)
    }) {
        TimeRule::Columns(vec![c.clone()])
    } else if let Some(c) = columns
        .iter()
        .find(|c| stat(c).is_some_and(|s| s.values > 0 && s.uuid_times == s.values))
    {
        TimeRule::Columns(vec![c.clone()])
    } else {
        TimeRule::Default
    };
    let json = seen.is_some_and(|s| s.columns.iter().any(|(_, c)| c.json_blobs > 0));
    let files = source_db.rsplit('/').next().unwrap_or(source_db);
    let rule = MapRule {
        table: table.name.clone(),
        target: Some(target),
        key,
        time,
        json,
        files: Some(files.to_string()),
    };
    Some(Suggestion {
        target,
        map: rule.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_and_paths() {
        assert!(file_matches("graph.db", "a/b/graph.db"));
        assert!(file_matches("*.sqlite", "a/checkpoints.sqlite"));
        assert!(file_matches(
            "*/langgraph*.db",
            "crawler/langgraph_state.db"
        ));
        assert!(!file_matches("*/langgraph*.db", "crawler/sub/langgraph.db"));
        assert!(file_matches("**/langgraph*.db", "crawler/sub/langgraph.db"));
        assert!(file_matches("**/x.db", "x.db"));
        assert!(file_matches("crawler/**", "crawler/a/b.db"));
        assert!(!file_matches("crawler/**", "other/a.db"));
        assert!(file_matches("?.db", "dir/a.db"));
        assert!(!file_matches("?.db", "dir/ab.db"));
    }

    #[test]
    fn maps_read_back_from_their_text() {
        for text in [
            "store=memories;key=prefix+key;time=updated_at;json;files=*/graph.db",
            "\"a=b\"=tools;key=\"x;y\"+\"p+q\";sep=\"::\"",
            "memory;time=none",
            "agno_memories=memories;key=memory_id;time=updated_at+created_at",
            "history=executions;key=event;files=history.db",
            "chat=memories;key=none",
            "t=memories;key=\"none\"",
        ] {
            let rule = parse_map(text).unwrap();
            assert_eq!(parse_map(&rule.to_string()).unwrap(), rule, "{text}");
        }
        assert_eq!(
            parse_map("\"a=b\"=agent_tools").unwrap().table,
            "a=b",
            "quotes let a table name hold ="
        );
        assert_eq!(
            parse_map("\"say \"\"hi\"\"\"=memories").unwrap().table,
            "say \"hi\""
        );
        assert_eq!(
            parse_map("t=memories;key=\"none\"").unwrap().key,
            KeyRule::Columns {
                columns: vec!["none".into()],
                separator: "/".into()
            }
        );
        for bad in [
            "t",
            "t=nowhere",
            "t=memories;colour=red",
            "t=memories;key=",
            "t=memories;key=a+",
            "t=memories;sep=:",
            "t=memories;time=a+",
            "\"t=memories",
            "t=memories;key=a;name=b",
        ] {
            assert!(parse_map(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn excludes_win_and_tables_match_without_case() {
        let map = TableMap::new()
            .with_map("Checkpoints=memories;files=langgraph.db")
            .unwrap()
            .with_exclude("checkpoints;files=crew.db")
            .unwrap()
            .with_exclude("files=*/scratch/**")
            .unwrap();
        assert!(matches!(
            map.decide("a/langgraph.db", "CHECKPOINTS"),
            Decision::Mapped(_)
        ));
        assert!(matches!(
            map.decide("a/crew.db", "checkpoints"),
            Decision::Excluded(_)
        ));
        assert_eq!(map.decide("a/other.db", "checkpoints"), Decision::Unmapped);
        assert!(matches!(
            map.decide("a/scratch/x.db", "memory"),
            Decision::Excluded(_)
        ));
        assert_eq!(
            map.decide("a/x.db", "MEMORY"),
            Decision::Mapped(Target::Memories.into())
        );
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(serde_json::from_str::<TableMap>(&json).unwrap(), map);
    }

    #[test]
    fn specs_serialize_without_their_defaults() {
        let plain = TableSpec::from(Target::Memories);
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"target":"agent_memories"}"#
        );
        let spec = TableSpec {
            target: Target::Tools,
            key: KeyRule::Columns {
                columns: vec!["a".into(), "b".into()],
                separator: ":".into(),
            },
            time: TimeRule::Columns(vec!["ts".into(), "created".into()]),
            json_blobs: true,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<TableSpec>(&text).unwrap(), spec);
    }

    #[test]
    fn blobs_are_json_only_when_exactly_json() {
        assert!(blob_json(br#"{"a":1.50}"#).is_some());
        assert_eq!(
            blob_json(br#"{"a": 1.50}"#).unwrap().get(),
            r#"{"a": 1.50}"#
        );
        assert!(blob_json(b"[1,2] ").is_none(), "whitespace around it");
        assert!(blob_json(b"\x93\x01").is_none(), "msgpack");
        assert!(blob_json(b"not json").is_none());
        assert!(
            blob_json(br#"{"$base64":"AA=="}"#).is_none(),
            "reads as a tag"
        );
        assert!(blob_json(br#"{"$base64":"AA==","x":1}"#).is_some());
        assert!(blob_json(b"").is_none());
    }

    #[test]
    fn uuid_times_are_read_from_versions_that_hold_one() {
        let langgraph = SqlValue::Text("1efa6667-8a84-65b4-bfff-80ecb163d6ce".into());
        let at = uuid_time(&langgraph).unwrap();
        assert_eq!(at.format("%Y-%m-%d").to_string(), "2024-11-19");
        assert!(
            uuid_time(&SqlValue::Text(
                "bac2c21a-220e-4f0b-a781-b06f91a0bdfd".into()
            ))
            .is_none()
        );
        assert!(time_of(&SqlValue::Text("2024-01-15 10:30:00".into())).is_ok());
    }
}
