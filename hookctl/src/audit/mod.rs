//! The audit log: one JSON line per dispatch, appended with a single `write` to a file
//! opened `O_APPEND|O_NOFOLLOW|O_CLOEXEC` (created 0640: hooks' stderr is in it), and
//! rotated under an exclusive `flock` so concurrent dispatchers never lose history.
//! What a line holds: [`line`](mod@line).

pub(crate) mod line;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation, OFlags};

/// Past this size the log is rotated before the next line.
pub(crate) const ROTATE_BYTES: u64 = 10 << 20;
/// How many rotated files are kept (`<log>.1` newest … `<log>.5` oldest).
pub(crate) const KEEP_ROTATIONS: u32 = 5;

/// Why a line could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
    #[error("it is a symlink, and the audit log is never written through one")]
    Symlink,
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it is owned by uid {0}; the audit log is written only to a file of our own")]
    Owner(u32),
    #[error("it has {0} hard links; the audit log is never written to a linked file")]
    Linked(u64),
    #[error("refused: {}", .0.reason())]
    Untrusted(Box<virt_hooks_core::backend::Untrusted>),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Appends `line` (one whole line, newline included) to the log at `path`, rotating it
/// first when it has grown past `rotate_at` bytes. `opened` is the log as [`open`]ed
/// earlier by the caller, if it was: used first, so it is not checked and opened again.
pub(crate) fn append(path: &Path, opened: Option<File>, line: &[u8], rotate_at: u64) -> Result<(), AuditError> {
    let mut opened = opened;
    // Another dispatcher may rotate the file between our open and our lock: then the
    // locked file is no longer the log, and we open again.
    for _ in 0..8 {
        let file = match opened.take() {
            Some(file) => file,
            None => open(path)?,
        };
        flock(&file, FlockOperation::LockExclusive).map_err(io::Error::from)?;
        let ours = file.metadata()?;
        let current = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if (current.dev(), current.ino()) != (ours.dev(), ours.ino()) {
            continue;
        }
        if ours.len() > 0 && ours.len().saturating_add(line.len() as u64) > rotate_at {
            rotate(path)?;
            // Still holding the lock on the rotated file: whoever waits on it will
            // find it is no longer the log and reopen, as we do now.
            continue;
        }
        // A line cut short before (a crash, an old version on a full disk) is ended
        // first, so that this one is a line of its own.
        let mut last = [0u8; 1];
        let torn = ours.len() > 0
            && std::os::unix::fs::FileExt::read_at(&file, &mut last, ours.len() - 1).is_ok_and(|n| n == 1)
            && last[0] != b'\n';
        let written = if torn {
            (&file).write_all(&[b"\n", line].concat())
        } else {
            (&file).write_all(line)
        };
        if let Err(e) = written {
            // A full disk takes part of a line: cut it off again, so that the next
            // one does not run on from it (libvirt's log holds this one, see dispatch).
            let _ = file.set_len(ours.len());
            return Err(e.into());
        }
        return Ok(());
    }
    Err(io::Error::other("the log kept being rotated under us").into())
}

/// Checks where the log will be written, for `append` and for `hookctl check`: its
/// directory must pass the trust rule (so nobody else can swap the file or a link in),
/// and an existing log must be a regular file of our own with one link.
pub(crate) fn check(path: &Path) -> Result<(), AuditError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    virt_hooks_core::backend::TrustPolicy::current_user()
        .check_dir(dir)
        .map_err(|why| AuditError::Untrusted(Box::new(why)))?;
    match fs::symlink_metadata(path) {
        Ok(meta) => vet(&meta).map(drop),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn vet(meta: &fs::Metadata) -> Result<&fs::Metadata, AuditError> {
    if meta.file_type().is_symlink() {
        return Err(AuditError::Symlink);
    }
    if !meta.is_file() {
        return Err(AuditError::NotRegular);
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(AuditError::Owner(meta.uid()));
    }
    if meta.nlink() != 1 {
        return Err(AuditError::Linked(meta.nlink()));
    }
    Ok(meta)
}

pub(crate) fn open(path: &Path) -> Result<File, AuditError> {
    check(path)?;
    let flags = OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => AuditError::Symlink,
            _ => AuditError::Io(e),
        })?;
    let meta = file.metadata()?;
    vet(&meta)?;
    // A log left readable by everyone by an older version: hooks' stderr is in it.
    if meta.mode() & 0o137 != 0 {
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o640)).map_err(io::Error::from)?;
    }
    Ok(file)
}

/// `<log>.N` for rotation N.
pub(crate) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// Shifts `<log>.1…` up by one (dropping the oldest) and moves the log to `<log>.1`.
/// `rename` replaces a symlink rather than following it.
fn rotate(path: &Path) -> io::Result<()> {
    for n in (1..KEEP_ROTATIONS).rev() {
        match fs::rename(rotated(path, n), rotated(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, rotated(path, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn created_0640_and_appended() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("a.jsonl");
        append(&log, None, b"one\n", 1 << 20).unwrap();
        append(&log, None, b"two\n", 1 << 20).unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"one\ntwo\n");
        assert_eq!(fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn never_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("shadow");
        fs::write(&target, b"secret\n").unwrap();
        let log = tmp.path().join("a.jsonl");
        symlink(&target, &log).unwrap();
        let err = append(&log, None, b"line\n", 1 << 20).unwrap_err();
        assert!(matches!(err, AuditError::Symlink), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"secret\n");
        // A dangling symlink is not followed to create its target either.
        let dangling = tmp.path().join("b.jsonl");
        symlink(tmp.path().join("created-by-us"), &dangling).unwrap();
        assert!(append(&dangling, None, b"line\n", 1 << 20).is_err());
        assert!(!tmp.path().join("created-by-us").exists());
    }

    #[test]
    fn foreign_linked_or_open_logs_are_refused_and_old_modes_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("a.jsonl");
        fs::write(&log, b"").unwrap();
        fs::set_permissions(&log, fs::Permissions::from_mode(0o644)).unwrap();
        append(&log, None, b"x\n", 1 << 20).unwrap();
        assert_eq!(fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o640);
        // A hard link to a file elsewhere (say, one the attacker will read).
        let other = tmp.path().join("other");
        fs::hard_link(&log, &other).unwrap();
        assert!(matches!(
            append(&log, None, b"x\n", 1 << 20),
            Err(AuditError::Linked(2))
        ));
        fs::remove_file(&other).unwrap();
        // A log in a directory others may write.
        let open_dir = tmp.path().join("open");
        fs::create_dir(&open_dir).unwrap();
        fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = append(&open_dir.join("a.jsonl"), None, b"x\n", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("writable by others"), "{err}");
        assert!(!open_dir.join("a.jsonl").exists());
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&log, Some(rustix::fs::Uid::from_raw(1000)), None).unwrap();
            assert!(matches!(
                append(&log, None, b"x\n", 1 << 20),
                Err(AuditError::Owner(1000))
            ));
        }
    }

    #[test]
    fn rotation_keeps_history() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("a.jsonl");
        for i in 0..20 {
            append(&log, None, format!("line {i:02}\n").as_bytes(), 16).unwrap();
        }
        // 8-byte lines, 16-byte files: two lines per file, five rotations kept.
        assert_eq!(fs::read_to_string(&log).unwrap(), "line 18\nline 19\n");
        assert_eq!(fs::read_to_string(rotated(&log, 1)).unwrap(), "line 16\nline 17\n");
        assert_eq!(fs::read_to_string(rotated(&log, 5)).unwrap(), "line 08\nline 09\n");
        assert!(!rotated(&log, 6).exists());
    }

    #[test]
    fn concurrent_writers_lose_nothing_across_rotations() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("a.jsonl");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        append(&log, None, format!("t{t} {i:03}\n").as_bytes(), 200).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 7-byte lines and 200-byte files: a file is rotated once it holds 28 lines
        // (196 bytes). If two writers rotated at once, a rotated file would be short
        // or a line would be missing.
        let per_file = 200 / 7;
        for n in 1..=KEEP_ROTATIONS {
            let text = fs::read_to_string(rotated(&log, n)).unwrap();
            assert_eq!(text.lines().count(), per_file, "{}", rotated(&log, n).display());
            assert!(text.lines().all(|l| l.len() == 6), "a torn line in {text:?}");
        }
        let current = fs::read_to_string(&log).unwrap();
        assert_eq!(current.lines().count(), 200 % per_file);
    }
}
