//! Which agents tree a run reads (its source's name, the host and the absolute agents
//! path), and the warning when the files of this run were last moved from another tree
//! under the same source: two trees with the same relative paths (two hosts, say) would
//! otherwise be taken for two states of one tree.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::PgPool;

use super::BackfillOptions;
use super::report::Report;
use crate::error::{Error, Result};

/// Files named in one warning; the rest are counted.
const SHOWN: usize = 5;

/// The tree a run reads.
pub(crate) struct Tree {
    /// The operator's name for it, '' when none.
    pub(crate) source: String,
    /// The machine the run runs on.
    pub(crate) host: String,
    /// The agents path, absolute.
    pub(crate) agents_path: String,
}

/// Where one file (`source_db`) was last moved from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct From {
    host: String,
    agents_path: String,
    run_id: String,
}

/// The files of this run's source last moved from another tree, by path.
pub(crate) struct Earlier {
    tree: Tree,
    files: BTreeMap<String, From>,
}

/// Longest source name.
const NAME_MAX: usize = 64;

/// Checks a source's name (`--source`): 1 to 64 ASCII letters, digits, `.`, `_` and
/// `-`, starting with a letter or digit, so it reads the same in ids, `metadata.source`,
/// reports and shell commands. The empty name is the unnamed source, always valid.
///
/// # Errors
/// [`Error::InvalidInput`] naming what is wrong with it.
pub fn check_source(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        return Ok(());
    } else if name.len() > NAME_MAX {
        format!("{name:?} is longer than {NAME_MAX} characters")
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("{name:?} holds {c:?}: use letters, digits, '.', '_' and '-' (e.g. host-a)")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!("{name:?} must start with a letter or a digit")
    } else {
        return Ok(());
    };
    Err(Error::invalid("--source", reason))
}

impl Tree {
    pub(crate) fn of(options: &BackfillOptions) -> Result<Self> {
        check_source(&options.source)?;
        Ok(Tree {
            source: options.source.clone(),
            host: host(),
            agents_path: absolute(&options.agents_path),
        })
    }

    /// The files of this source that a run from another host or agents path moved last
    /// (per `agent_memory.backfill_tables`), read before this run moves them itself.
    /// Runs that recorded no host or path are not compared. A failed read gives no
    /// warning rather than failing the run.
    pub(crate) async fn earlier(self, pool: &PgPool) -> Earlier {
        let rows = sqlx::query_as::<_, (String, String, String, String)>(
            "select distinct on (t.source_db) t.source_db, r.host, r.agents_path, r.id
             from agent_memory.backfill_tables t
             join agent_memory.backfill_runs r on r.id = t.run_id
             where t.source = $1 and r.host is not null and r.agents_path is not null
             order by t.source_db, t.caught_up_at desc",
        )
        .bind(&self.source)
        .fetch_all(pool)
        .await;
        let rows = rows.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot read which trees moved these files before");
            Vec::new()
        });
        let files = rows
            .into_iter()
            .filter(|(_, host, path, _)| *host != self.host || *path != self.agents_path)
            .map(|(source_db, host, agents_path, run_id)| {
                let from = From {
                    host,
                    agents_path,
                    run_id,
                };
                (source_db, from)
            })
            .collect();
        Earlier { tree: self, files }
    }
}

impl Earlier {
    /// One warning per other tree that last moved some of the files of `report`.
    pub(crate) fn warnings(&self, report: &Report) -> Vec<String> {
        let mut by_tree: BTreeMap<&From, Vec<&str>> = BTreeMap::new();
        for file in &report.files {
            if let Some(from) = self.files.get(&file.source_db) {
                by_tree.entry(from).or_default().push(&file.source_db);
            }
        }
        by_tree
            .into_iter()
            .map(|(from, paths)| self.warning(from, &paths))
            .collect()
    }

    fn warning(&self, from: &From, paths: &[&str]) -> String {
        let mut shown = paths
            .iter()
            .take(SHOWN)
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        if paths.len() > SHOWN {
            shown.push_str(&format!(" and {} more", paths.len() - SHOWN));
        }
        let source = match self.tree.source.as_str() {
            "" => "the unnamed source".to_string(),
            name => format!("source {name:?}"),
        };
        let fix = match self.tree.source.as_str() {
            "" => "if they are another tree's files, give each tree its own name with \
                   --source NAME (ids and metadata.source then keep them apart)"
                .to_string(),
            name => format!(
                "if they are another tree's files, give this tree a name of its own \
                 (--source NAME other than {name:?})"
            ),
        };
        format!(
            "{} files of {source} have the same paths as files last moved from another \
             agents tree ({}:{}, run {}): {shown}; this run ({}:{}) took them for a newer \
             state of those files, under the same row ids; {fix}",
            paths.len(),
            from.host,
            from.agents_path,
            from.run_id,
            self.tree.host,
            self.tree.agents_path,
        )
    }
}

/// This machine's name: the kernel's, else `/etc/hostname`, else `HOSTNAME` or
/// `COMPUTERNAME`, else `unknown`.
pub(crate) fn host() -> String {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let env = |name: &str| std::env::var(name).ok();
    [
        read("/proc/sys/kernel/hostname"),
        read("/etc/hostname"),
        env("HOSTNAME"),
        env("COMPUTERNAME"),
    ]
    .into_iter()
    .flatten()
    .map(|name| name.trim().to_string())
    .find(|name| !name.is_empty())
    .unwrap_or_else(|| "unknown".into())
}

/// `path` made absolute (symlinks resolved where it exists), as text.
pub(crate) fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::FileReport;

    fn report(paths: &[&str]) -> Report {
        let mut report = crate::backfill::engine::empty_report(
            &BackfillOptions::new("/agents"),
            "r2".into(),
            None,
            false,
        );
        report.files = paths
            .iter()
            .map(|p| FileReport {
                source_db: p.to_string(),
                agent: Ok("a".into()),
                kind: "legacy",
                problem: None,
                claimed_elsewhere: false,
                tables: Vec::new(),
            })
            .collect();
        report
    }

    fn earlier(source: &str, files: &[(&str, &str)]) -> Earlier {
        Earlier {
            tree: Tree {
                source: source.into(),
                host: "h2".into(),
                agents_path: "/srv/agents".into(),
            },
            files: files
                .iter()
                .map(|(path, host)| {
                    let from = From {
                        host: host.to_string(),
                        agents_path: "/srv/agents".into(),
                        run_id: format!("run-{host}"),
                    };
                    (path.to_string(), from)
                })
                .collect(),
        }
    }

    #[test]
    fn a_warning_names_the_shared_paths_the_other_tree_and_the_fix() {
        let earlier = earlier("", &[("a/x.db", "h1"), ("b/y.db", "h1"), ("c/z.db", "h3")]);
        let warnings = earlier.warnings(&report(&["a/x.db", "b/y.db", "d/new.db"]));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let warning = &warnings[0];
        for part in [
            "2 files of the unnamed source",
            "\"a/x.db\", \"b/y.db\"",
            "h1:/srv/agents, run run-h1",
            "this run (h2:/srv/agents)",
            "--source NAME",
        ] {
            assert!(warning.contains(part), "{part:?} missing from {warning}");
        }
        assert!(!warning.contains("new.db") && !warning.contains("z.db"));
    }

    #[test]
    fn no_warning_when_no_file_of_the_run_came_from_another_tree() {
        let earlier = earlier("", &[("a/x.db", "h1")]);
        assert!(earlier.warnings(&report(&["b/y.db"])).is_empty());
    }

    #[test]
    fn a_named_source_is_told_to_pick_another_name_and_long_lists_are_cut() {
        let paths: Vec<String> = (0..8).map(|i| format!("a{i}/m.db")).collect();
        let files: Vec<(&str, &str)> = paths.iter().map(|p| (p.as_str(), "h1")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let warnings = earlier("east", &files).warnings(&report(&refs));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("8 files of source \"east\""));
        assert!(warnings[0].contains("and 3 more"), "{}", warnings[0]);
        assert!(warnings[0].contains("other than \"east\""));
    }

    #[test]
    fn source_names_are_letters_digits_dots_dashes_and_underscores() {
        for good in ["", "host-a", "east.1", "A_b-9", &"x".repeat(64)] {
            assert!(check_source(good).is_ok(), "{good:?}");
        }
        for (bad, why) in [
            ("host a", "' '"),
            ("a/b", "'/'"),
            ("-a", "start with a letter"),
            (".", "start with a letter"),
            ("é", "'é'"),
            (&"x".repeat(65), "longer than 64"),
        ] {
            let err = check_source(bad).unwrap_err().to_string();
            assert!(
                err.contains("--source") && err.contains(why),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn the_host_and_the_absolute_path_are_known() {
        assert!(!host().is_empty());
        let path = absolute(Path::new("no/such/dir"));
        assert!(Path::new(&path).is_absolute(), "{path}");
        assert!(path.ends_with("no/such/dir"));
    }
}
