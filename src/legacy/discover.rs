//! Finding legacy SQLite files under the agents path, the agent each belongs to, and whether each can be read.

use std::path::{Component, Path, PathBuf};

use super::open::{ReadOptions, Source};
use super::own::OWN_SCHEMA_TABLE;
use crate::error::{Chain, Error};
use crate::record::AgentId;

/// Extensions of legacy database files, matched without regard to case.
const EXTENSIONS: &[&str] = &["db", "sqlite", "sqlite3"];

/// One file found under the agents path.
#[derive(Debug)]
pub struct Found {
    /// The file.
    pub path: PathBuf,
    /// Its path relative to the agents path, `/`-separated: `metadata.source_db`.
    pub source_db: String,
    /// The agent it belongs to: the first folder under the agents path on its way, or
    /// the file's stem when it lies directly in the agents path. An error when that
    /// name cannot be an agent id.
    pub agent: Result<AgentId, String>,
    /// What probing the file found.
    pub probe: Probe,
}

/// What a found file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A SQLite database of other software: its tables are legacy tables.
    Legacy,
    /// A SQLite database of the library's own layout (it has `agent_memory_schema`):
    /// its rows move as themselves.
    Own,
    /// Found by [`find`] and not opened yet: what it is shows when it is opened
    /// ([`Source::probe`]).
    Unopened,
    /// Not usable; the message names the file and says what is wrong.
    Problem(String),
}

impl Probe {
    /// A one-word name for reports: `legacy`, `library` or `problem`.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Legacy | Probe::Unopened => "legacy",
            Probe::Own => "library",
            Probe::Problem(_) => "problem",
        }
    }
}

/// Every `*.db`, `*.sqlite` and `*.sqlite3` file at any depth under `agents_path`, in
/// path order, each probed (header check, then a read-only open and a schema read).
///
/// A file that cannot be read, is empty, truncated, corrupt or not SQLite gets a
/// [`Probe::Problem`]; a folder that cannot be listed is reported as a [`Found`] with a
/// problem too. Neither stops the rest. `-wal`, `-shm` and `-journal` companions are
/// never listed (their names do not end in a database extension).
///
/// Only regular files are opened: a FIFO, socket or device with a database's name is a
/// problem, found without opening it (opening a FIFO would wait for a writer forever).
///
/// Symbolic links are judged by where they lead, so that whoever can write into an agent
/// folder cannot make the backfill read, under that agent's name, a file it was never
/// meant to see:
///
/// - a link (to a file or a folder) whose target lies outside the agents path, or that
///   leads nowhere, is refused: reported as a problem naming it, never opened;
/// - a link to a file inside the agents path is followed: the file is read as the
///   link's own (`source_db` and agent from the link's path), from the target's real
///   path, resolved once here, so a link changed later cannot redirect the read;
/// - a link to a folder inside the agents path is not followed: its files are read at
///   their own place, and a link loop cannot trap the walk.
pub async fn discover(agents_path: &Path, options: &ReadOptions) -> Vec<Found> {
    let mut found = find(agents_path);
    for file in &mut found {
        if file.probe == Probe::Unopened {
            file.probe = probe(&file.path, options).await;
        }
    }
    found
}

/// What [`discover`] finds, without opening any file: every database file as
/// [`Probe::Unopened`] (or a problem found on the way), for a caller that opens each
/// file once and probes it then ([`Source::probe`]).
pub fn find(agents_path: &Path) -> Vec<Found> {
    let mut walk = Walk {
        // Links are judged against the real agents path (it may itself be a link).
        root: std::fs::canonicalize(agents_path).unwrap_or_else(|_| agents_path.to_path_buf()),
        files: Vec::new(),
        problems: Vec::new(),
    };
    walk.folder(agents_path);
    walk.files.sort();
    let mut found = Vec::new();
    for (path, read) in walk.files {
        let (source_db, agent) = place(agents_path, &path);
        found.push(Found {
            path: read,
            source_db,
            agent,
            probe: Probe::Unopened,
        });
    }
    for (path, problem) in walk.problems {
        let (source_db, agent) = place(agents_path, &path);
        found.push(Found {
            path,
            source_db,
            agent,
            probe: Probe::Problem(problem),
        });
    }
    found.sort_by(|a, b| a.source_db.cmp(&b.source_db));
    found
}

/// What a walk of the agents path found: files to read (where found, and the path to
/// read them from) and paths refused with the reason.
struct Walk {
    root: PathBuf,
    files: Vec<(PathBuf, PathBuf)>,
    problems: Vec<(PathBuf, String)>,
}

impl Walk {
    fn folder(&mut self, folder: &Path) {
        let entries = match std::fs::read_dir(folder) {
            Ok(entries) => entries,
            Err(e) => {
                self.problems.push((
                    folder.to_path_buf(),
                    format!(
                        "folder {} cannot be listed: {e}; check its permissions",
                        folder.display()
                    ),
                ));
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // file_type does not follow symbolic links: a link is judged by `link`.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                self.folder(&path);
            } else if kind.is_symlink() {
                self.link(path);
            } else if is_database_name(&path) {
                // Any other kind (a FIFO too) is listed: the probe says what it is.
                self.files.push((path.clone(), path));
            }
        }
    }

    /// A symbolic link: see [`discover`] for which are followed.
    fn link(&mut self, path: PathBuf) {
        let target = std::fs::canonicalize(&path);
        let is_folder = target.as_ref().is_ok_and(|t| t.is_dir());
        if !is_folder && !is_database_name(&path) {
            return;
        }
        let what = if is_folder { "folder" } else { "file" };
        match target {
            Err(e) => self.problems.push((
                path.clone(),
                format!(
                    "{} is a symbolic link that leads nowhere ({e}); refused, not read",
                    path.display()
                ),
            )),
            Ok(target) if !target.starts_with(&self.root) => self.problems.push((
                path.clone(),
                format!(
                    "{} is a symbolic link to a {what} outside the agents path ({}); \
                     refused, not read: move the {what} into the agents path to migrate it",
                    path.display(),
                    target.display()
                ),
            )),
            // Inside: a folder's files are read at their own place.
            Ok(_) if is_folder => {}
            Ok(target) => self.files.push((path, target)),
        }
    }
}

fn is_database_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// `source_db` and the agent of `path` under `root`.
fn place(root: &Path, path: &Path) -> (String, Result<AgentId, String>) {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let source_db = parts.join("/");
    let agent_name = match parts.as_slice() {
        [_file] => relative
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        [first, ..] => first.clone(),
        [] => String::new(),
    };
    let agent = AgentId::new(agent_name).map_err(|e| format!("no agent for {source_db:?}: {e}"));
    (source_db, agent)
}

async fn probe(path: &Path, options: &ReadOptions) -> Probe {
    let described = |e: Error| Probe::Problem(Chain(&e).to_string());
    let mut source = match Source::open(path, options).await {
        Ok(source) => source,
        Err(e) => return described(e),
    };
    source.probe().await.unwrap_or_else(described)
}

impl Source {
    /// What the open file is: of the library's own layout (it has `agent_memory_schema`)
    /// or a legacy database.
    ///
    /// # Errors
    /// [`Error::SqliteFile`] when its schema cannot be read.
    pub async fn probe(&mut self) -> crate::error::Result<Probe> {
        Ok(match self.has_table(OWN_SCHEMA_TABLE).await? {
            true => Probe::Own,
            false => Probe::Legacy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_and_source_dbs_come_from_the_path() {
        let root = Path::new("/agents");
        let (db, agent) = place(root, Path::new("/agents/crawler/sub/x.DB"));
        assert_eq!(db, "crawler/sub/x.DB");
        assert_eq!(agent.unwrap().as_str(), "crawler");
        let (db, agent) = place(root, Path::new("/agents/solo.sqlite3"));
        assert_eq!(db, "solo.sqlite3");
        assert_eq!(agent.unwrap().as_str(), "solo");
        assert!(is_database_name(Path::new("a.SQLite")));
        assert!(is_database_name(Path::new("my db.sqlite")));
        for companion in ["a.db-wal", "a.db-shm", "a.db-journal", "a.txt", "db"] {
            assert!(!is_database_name(Path::new(companion)), "{companion}");
        }
    }
}
