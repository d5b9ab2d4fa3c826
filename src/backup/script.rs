//! The backup's two shell scripts: `backup_sqlite.sh`, which makes the same backup
//! again with the `sqlite3` tool, and `restore_sqlite.sh`, which puts the copies back.

use std::ffi::OsStr;
use std::path::Path;

use super::{BackedUpFile, CopyDetails, Manifest};

/// `text` as one single-quoted shell word: every `'` becomes `'\''`, nothing else is
/// special inside single quotes (not `$`, backticks, `\`, `"` or a newline), so the shell
/// reads back exactly these bytes. The empty string becomes `''`.
pub(crate) fn shell_quote(text: &OsStr) -> Vec<u8> {
    let bytes = os_bytes(text);
    let mut quoted = Vec::with_capacity(bytes.len() + 2);
    quoted.push(b'\'');
    for &b in bytes.iter() {
        if b == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    quoted
}

#[cfg(unix)]
fn os_bytes(text: &OsStr) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(text.as_bytes())
}

#[cfg(not(unix))]
fn os_bytes(text: &OsStr) -> std::borrow::Cow<'_, [u8]> {
    match text.to_string_lossy() {
        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
        std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
    }
}

/// A script under construction: text and quoted paths.
struct Script(Vec<u8>);

impl Script {
    fn text(&mut self, text: &str) -> &mut Self {
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    fn path(&mut self, path: impl AsRef<OsStr>) -> &mut Self {
        self.0.extend_from_slice(&shell_quote(path.as_ref()));
        self
    }
}

fn copied<'a>(
    manifest: &'a Manifest<'_>,
) -> impl Iterator<Item = (&'a BackedUpFile, &'a CopyDetails)> {
    manifest
        .files
        .iter()
        .filter_map(|f| f.details().map(|d| (f, d)))
}

pub(super) fn backup_script(manifest: &Manifest<'_>, backup_root: &Path) -> Vec<u8> {
    let mut s = Script(Vec::new());
    s.text("#!/usr/bin/env bash\n")
        .text("# Makes again the backup ")
        .text(&manifest.name)
        .text(" of the legacy SQLite files, with the sqlite3\n")
        .text("# command-line tool's .backup command (safe while agents run; sources are only read).\n")
        .text("# Usage: bash backup_sqlite.sh [DEST]   (DEST defaults to a new sqlite_backup_<UTC time>\n")
        .text("# folder beside this backup). Written by memshift's backfill --backup.\n")
        .text("set -euo pipefail\n\n")
        .text("command -v sqlite3 >/dev/null 2>&1 || { echo 'backup_sqlite.sh: the sqlite3 command-line tool is needed' >&2; exit 1; }\n\n")
        .text("agents=")
        .path(manifest.agents_path)
        .text("\nif [ \"$#\" -ge 1 ]; then\n  dest=$1\nelse\n  dest=")
        .path(backup_root)
        .text("/sqlite_backup_$(date -u +%Y%m%dT%H%M%SZ)\nfi\n")
        .text("case $dest in /*) ;; *) dest=$PWD/$dest ;; esac\n")
        .text("mkdir -p -- \"$dest\"\n")
        .text("scratch=$(mktemp -d)\ntrap 'rm -rf -- \"$scratch\"' EXIT\n\n")
        .text(BACKUP_ONE)
        .text("\nfailed=0\n");
    if copied(manifest).next().is_none() {
        s.text("echo 'backup_sqlite.sh: this backup holds no files'\n");
    }
    for (file, _) in copied(manifest) {
        let relative = file.copy.strip_prefix(manifest.dir).unwrap_or(&file.copy);
        s.text("backup_one \"$agents\"/")
            .path(relative)
            .text(" \"$dest\"/")
            .path(relative)
            .text(" || failed=1\n");
    }
    s.text(
        "\nif [ \"$failed\" -ne 0 ]; then\n  echo 'backup_sqlite.sh: some files were not backed up (see above)' >&2\n  exit 1\nfi\n\
         printf 'backed up to %s\\n' \"$dest\"\n",
    );
    s.0
}

/// The backup script's per-file function: no `set -e` inside a function called with
/// `||`, so every step checks itself.
const BACKUP_ONE: &str = r#"# backup_one SOURCE COPY: a consistent copy of SOURCE at COPY, by sqlite3's .backup.
backup_one() {
  local src=$1 dst=$2 work
  work=$(mktemp -d "$scratch/f.XXXXXX") || return 1
  mkdir -p -- "${dst%/*}" || return 1
  if [ "$(od -An -tu1 -j18 -N1 -- "$src" | tr -d ' \n')" = 2 ] && [ ! -e "$src-shm" ]; then
    # A WAL file that no process has open: read a private copy (with its -wal), so
    # that no -wal or -shm appear beside the source.
    cp -- "$src" "$work/db" || return 1
    if [ -e "$src-wal" ]; then cp -- "$src-wal" "$work/db-wal" || return 1; fi
    (cd "$work" && sqlite3 -cmd '.timeout 30000' db '.backup out.db') || { printf 'cannot back up %s\n' "$src" >&2; return 1; }
  else
    (cd "$work" && sqlite3 -readonly -cmd '.timeout 30000' "$src" '.backup out.db') || { printf 'cannot back up %s\n' "$src" >&2; return 1; }
  fi
  mv -f -- "$work/out.db" "$dst" || return 1
  rm -rf -- "$work"
}
"#;

pub(super) fn restore_script(manifest: &Manifest<'_>) -> Vec<u8> {
    let mut s = Script(Vec::new());
    s.text("#!/usr/bin/env bash\n")
        .text("# Puts the legacy SQLite files of backup ")
        .text(&manifest.name)
        .text(" (id ")
        .text(&manifest.id)
        .text(") back in place.\n")
        .text("# Stop every agent first. Usage: bash restore_sqlite.sh [--force]\n")
        .text("#   --force  restore even where a -wal with content lies next to a target\n")
        .text("# Every copy is checked against the manifest's sha256 (below) before anything is touched.\n")
        .text("# Written by memshift's backfill --backup.\n")
        .text("set -euo pipefail\n\n")
        .text(RESTORE_HEAD);
    if copied(manifest).next().is_none() {
        // Also spares old bash versions an empty array under `set -u`.
        s.text("\necho 'restore_sqlite.sh: this backup holds no files'\nexit 0\n");
        return s.0;
    }
    s.text("\ncopies=(\n");
    for (file, _) in copied(manifest) {
        s.text("  ").path(&file.copy).text("\n");
    }
    s.text(")\ntargets=(\n");
    for (file, _) in copied(manifest) {
        s.text("  ").path(&file.source).text("\n");
    }
    s.text(")\nsums=(\n");
    for (_, details) in copied(manifest) {
        s.text("  ").path(&details.copy_sha256).text("\n");
    }
    s.text(")\n\n").text(RESTORE_BODY);
    s.0
}

const RESTORE_HEAD: &str = r#"force=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    *) printf 'usage: %s [--force]\n' "$0" >&2; exit 2 ;;
  esac
done

sha256_of() {
  local sum
  if command -v sha256sum >/dev/null 2>&1; then
    sum=$(sha256sum < "$1")
  else
    sum=$(shasum -a 256 < "$1")
  fi
  printf '%s' "${sum%% *}"
}
"#;

const RESTORE_BODY: &str = r#"# 1. Check everything before touching anything.
problems=0
for i in "${!copies[@]}"; do
  copy=${copies[$i]}
  target=${targets[$i]}
  if [ ! -f "$copy" ]; then
    printf 'backup copy missing: %s\n' "$copy" >&2
    problems=1
    continue
  fi
  if [ "$(sha256_of "$copy")" != "${sums[$i]}" ]; then
    printf 'backup copy damaged (sha256 differs from the manifest): %s\n' "$copy" >&2
    problems=1
  fi
  if [ -s "$target-wal" ] && [ "$force" -eq 0 ]; then
    printf '%s-wal has content: an agent may still be using %s; stop it first, or pass --force\n' "$target" "$target" >&2
    problems=1
  fi
done
if [ "$problems" -ne 0 ]; then
  echo 'restore_sqlite.sh: nothing was restored' >&2
  exit 1
fi

# 2. Put each file back: a checked temporary copy beside the target, renamed into place
#    once the target's stale -wal, -shm and -journal are gone (SQLite would replay them).
for i in "${!copies[@]}"; do
  copy=${copies[$i]}
  target=${targets[$i]}
  tmp="$target.restore-$$"
  mkdir -p -- "${target%/*}"
  cp -p -- "$copy" "$tmp"
  if [ "$(sha256_of "$tmp")" != "${sums[$i]}" ]; then
    rm -f -- "$tmp"
    printf 'copying %s to %s failed its sha256 check\n' "$copy" "$target" >&2
    exit 1
  fi
  rm -f -- "$target-wal" "$target-shm" "$target-journal"
  mv -f -- "$tmp" "$target"
  printf 'restored %s\n' "$target"
done
printf 'restore_sqlite.sh: %d file(s) restored\n' "${#copies[@]}"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &[u8]) -> Vec<u8> {
        #[cfg(unix)]
        let os: &OsStr = std::os::unix::ffi::OsStrExt::from_bytes(text);
        #[cfg(not(unix))]
        let os: &OsStr = std::str::from_utf8(text).unwrap().as_ref();
        let mut script = b"printf '%s' ".to_vec();
        script.extend_from_slice(&shell_quote(os));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.sh");
        std::fs::write(&file, &script).unwrap();
        let out = std::process::Command::new("bash")
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "side effects"
        );
        out.stdout
    }

    #[test]
    fn quoting_is_exact() {
        assert_eq!(shell_quote("".as_ref()), b"''");
        assert_eq!(shell_quote("a b".as_ref()), b"'a b'");
        assert_eq!(shell_quote("it's".as_ref()), b"'it'\\''s'");
        let nasty: &[&[u8]] = &[
            b"my db.sqlite",
            b"it's.db",
            b"''",
            b"say \"hi\".db",
            b"$(touch pwned).db",
            b"`touch pwned`.db",
            b"${HOME}$HOME\\n\\",
            b"line\nbreak\n",
            "caf\u{e9} \u{1f600} \u{41c}\u{438}\u{440}.db".as_bytes(),
            b"-rf *",
            b"a;b|c&d>e<f",
            b"!!",
            b"\xff\xfe not utf-8",
            b"",
        ];
        for text in nasty {
            assert_eq!(round_trip(text), *text, "{}", String::from_utf8_lossy(text));
        }
    }
}
