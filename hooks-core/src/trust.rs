//! The trust rule for files run or read with the caller's privileges (hookctl runs as
//! root on every guest start).
//!
//! A file passes when it is a regular file owned by root or by the effective uid and not
//! writable by group or others, and every directory from `/` down to it passes the same
//! test, or is a root-owned sticky directory (`/tmp`: others cannot rename or delete
//! what they do not own). Symlinks are followed: the link's own directories and the
//! target's directories must all pass, so nobody but root and the effective uid can
//! change what a checked path names. This is sshd's `StrictModes` rule applied to the
//! real path and to the path as given.
//!
//! ```
//! use hooks_core::TrustPolicy;
//! let policy = TrustPolicy::current_user();
//! let dir = tempfile::tempdir()?;
//! let plugin = dir.path().join("10-log.wasm");
//! std::fs::write(&plugin, b"\0asm")?;
//! use std::os::unix::fs::PermissionsExt;
//! std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o644))?;
//! # // A temporary dir under a sticky /tmp passes.
//! policy.check_file(&plugin)?;
//! std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o666))?;
//! let refused = policy.check_file(&plugin).unwrap_err();
//! assert!(refused.to_string().ends_with("writable by others (mode 0666)"), "{refused}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Who may own what is loaded: root, and the effective uid when it is not root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrustPolicy {
    uid: u32,
}

impl Default for TrustPolicy {
    fn default() -> Self {
        Self::current_user()
    }
}

/// What is wrong with one file or directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Problem {
    /// Owned by a user other than root and the effective uid.
    Owner {
        /// Its owner.
        uid: u32,
    },
    /// Others may write it.
    WritableByOthers {
        /// Its permission bits.
        mode: u32,
    },
    /// Its group may write it.
    WritableByGroup {
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file (a device, a FIFO, a socket, a directory).
    NotRegular,
    /// It could not be examined.
    Io(Arc<io::Error>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Owner { uid } => write!(f, "owned by uid {uid}"),
            Problem::WritableByOthers { mode } => write!(f, "writable by others (mode {mode:04o})"),
            Problem::WritableByGroup { mode } => write!(f, "writable by group (mode {mode:04o})"),
            Problem::NotRegular => f.write_str("not a regular file"),
            Problem::Io(e) => write!(f, "cannot be examined: {e}"),
        }
    }
}

/// A path that fails the trust rule: the path asked about, the file or directory that
/// failed, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Untrusted {
    /// The path that was checked.
    pub path: PathBuf,
    /// The file or directory that failed (the path itself, an ancestor, or a symlink's
    /// target or one of its directories).
    pub culprit: PathBuf,
    /// Whether the culprit was reached through a symlink.
    pub through_symlink: bool,
    /// Whether the culprit is a directory (above the file) rather than the file.
    pub culprit_is_dir: bool,
    /// What is wrong with the culprit.
    pub problem: Problem,
}

impl Untrusted {
    pub(crate) fn file(path: &Path, culprit: &Path, through_symlink: bool, problem: Problem) -> Self {
        Untrusted {
            path: path.to_owned(),
            culprit: culprit.to_owned(),
            through_symlink,
            culprit_is_dir: false,
            problem,
        }
    }

    pub(crate) fn io(path: &Path, culprit: &Path, e: io::Error) -> Self {
        Self::file(path, culprit, false, Problem::Io(Arc::new(e)))
    }

    /// The reason without the path: `writable by others (mode 0777)`, `directory
    /// /srv/hooks is owned by uid 1000`, `symlink into /home/dev/build, owned by uid 1000`.
    pub fn reason(&self) -> String {
        let (problem, culprit) = (&self.problem, self.culprit.display());
        match (self.through_symlink, self.culprit_is_dir) {
            (false, false) => problem.to_string(),
            (false, true) => format!("directory {culprit} is {problem}"),
            (true, true) => format!("symlink into {culprit}, {problem}"),
            (true, false) => format!("symlink to {culprit}, {problem}"),
        }
    }

    /// Whether it failed only because the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(&self.problem, Problem::Io(e) if e.kind() == io::ErrorKind::NotFound) && self.culprit == self.path
    }

    fn describe(&self) -> String {
        format!("`{}`: {}", self.path.display(), self.reason())
    }
}

impl TrustPolicy {
    /// Root, and the effective uid of this process.
    pub fn current_user() -> Self {
        TrustPolicy {
            uid: rustix::process::geteuid().as_raw(),
        }
    }

    /// Root, and `uid`.
    pub const fn with_uid(uid: u32) -> Self {
        TrustPolicy { uid }
    }

    /// The non-root owner this policy trusts besides root (0 when it is root).
    pub const fn uid(&self) -> u32 {
        self.uid
    }

    fn trusted_owner(&self, uid: u32) -> bool {
        uid == 0 || uid == self.uid
    }

    /// The test for one directory: trusted owner and no group/other write, or a
    /// root-owned sticky directory.
    fn dir_problem(&self, meta: &Metadata) -> Option<Problem> {
        let mode = meta.mode() & 0o7777;
        if meta.uid() == 0 && mode & 0o1000 != 0 {
            return None;
        }
        self.owner_and_mode(meta)
    }

    fn owner_and_mode(&self, meta: &Metadata) -> Option<Problem> {
        let mode = meta.mode() & 0o7777;
        if !self.trusted_owner(meta.uid()) {
            Some(Problem::Owner { uid: meta.uid() })
        } else if mode & 0o002 != 0 {
            Some(Problem::WritableByOthers { mode })
        } else if mode & 0o020 != 0 {
            Some(Problem::WritableByGroup { mode })
        } else {
            None
        }
    }

    /// The test for the file itself (already known to exist): a regular file with a
    /// trusted owner and no group/other write.
    ///
    /// # Errors
    /// The problem found.
    pub fn file_problem(&self, meta: &Metadata) -> Result<(), Problem> {
        if !meta.is_file() {
            return Err(Problem::NotRegular);
        }
        self.owner_and_mode(meta).map_or(Ok(()), Err)
    }

    /// Checks a directory and every directory above it, both along the path as given
    /// (a symlinked component's own directory included) and along its real path.
    ///
    /// # Errors
    /// [`Untrusted`] naming the first directory that fails.
    pub fn check_dir(&self, dir: &Path) -> Result<(), Untrusted> {
        let absolute = std::path::absolute(dir).map_err(|e| Untrusted::io(dir, dir, e))?;
        if self.walk(dir, &absolute, false)? {
            let real = fs::canonicalize(&absolute).map_err(|e| Untrusted::io(dir, dir, e))?;
            self.walk(dir, &real, true)?;
        }
        Ok(())
    }

    /// Checks every directory from `/` down to `dir` (inclusive) by `lstat`; returns
    /// whether one of them is a symlink (whose target the caller checks along the real
    /// path).
    fn walk(&self, asked: &Path, dir: &Path, through_symlink: bool) -> Result<bool, Untrusted> {
        let mut saw_link = false;
        let mut prefix = PathBuf::new();
        for component in dir.components() {
            match component {
                Component::RootDir => prefix.push("/"),
                Component::Normal(name) => prefix.push(name),
                Component::ParentDir => {
                    prefix.pop();
                    continue;
                }
                Component::CurDir | Component::Prefix(_) => continue,
            }
            let fail = |problem| Untrusted {
                path: asked.to_owned(),
                culprit: prefix.clone(),
                through_symlink,
                culprit_is_dir: true,
                problem,
            };
            let meta = fs::symlink_metadata(&prefix).map_err(|e| fail(Problem::Io(Arc::new(e))))?;
            if meta.file_type().is_symlink() {
                // Its own directory passed; its target is checked along the real path.
                saw_link = true;
                continue;
            }
            if let Some(problem) = self.dir_problem(&meta) {
                return Err(fail(problem));
            }
        }
        Ok(saw_link)
    }

    /// Checks a file: its directories (as given and real), and, following symlinks, the
    /// file it names.
    ///
    /// # Errors
    /// [`Untrusted`] naming what fails and why.
    pub fn check_file(&self, path: &Path) -> Result<(), Untrusted> {
        self.check_file_meta(path).map(drop)
    }

    /// [`TrustPolicy::check_file`], returning the real path and its metadata.
    fn check_file_meta(&self, path: &Path) -> Result<(PathBuf, Metadata), Untrusted> {
        let absolute = std::path::absolute(path).map_err(|e| Untrusted::io(path, path, e))?;
        let parent = absolute.parent().unwrap_or(Path::new("/"));
        let linked_dir = self.walk(path, parent, false)?;
        let meta = fs::symlink_metadata(&absolute).map_err(|e| Untrusted::io(path, path, e))?;
        if !meta.file_type().is_symlink() && !linked_dir {
            self.file_problem(&meta)
                .map_err(|p| Untrusted::file(path, path, false, p))?;
            return Ok((absolute, meta));
        }
        let real = fs::canonicalize(&absolute).map_err(|e| Untrusted::io(path, path, e))?;
        self.walk(path, real.parent().unwrap_or(Path::new("/")), true)?;
        let meta = fs::metadata(&real).map_err(|e| Untrusted::io(path, &real, e))?;
        self.file_problem(&meta)
            .map_err(|p| Untrusted::file(path, &real, true, p))?;
        Ok((real, meta))
    }

    /// Checks a file and opens it for reading; the open file is checked again (`fstat`)
    /// and must be the file that was checked, so nothing can be swapped in between.
    ///
    /// # Errors
    /// [`Untrusted`], or `Problem::Io` when it cannot be opened.
    pub fn open(&self, path: &Path) -> Result<File, Untrusted> {
        let (real, checked) = self.check_file_meta(path)?;
        let linked = real != path;
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(&real)
            .map_err(|e| Untrusted::io(path, &real, e))?;
        let opened = file.metadata().map_err(|e| Untrusted::io(path, &real, e))?;
        if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
            let e = io::Error::other("it was replaced while it was being checked");
            return Err(Untrusted::io(path, &real, e));
        }
        self.file_problem(&opened)
            .map_err(|p| Untrusted::file(path, &real, linked, p))?;
        Ok(file)
    }

    /// Reads a whole file through [`TrustPolicy::open`].
    ///
    /// # Errors
    /// [`Untrusted`], including read errors as `Problem::Io`.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, Untrusted> {
        use std::io::Read;
        let mut file = self.open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| Untrusted::io(path, path, e))?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn file(p: &Path, mode: u32) {
        fs::write(p, b"x").unwrap();
        chmod(p, mode);
    }

    #[test]
    fn modes_of_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.so");
        let policy = TrustPolicy::current_user();
        file(&p, 0o644);
        policy.check_file(&p).unwrap();
        chmod(&p, 0o777);
        let e = policy.check_file(&p).unwrap_err();
        assert_eq!(e.reason(), "writable by others (mode 0777)");
        assert_eq!(
            e.to_string(),
            format!("`{}`: writable by others (mode 0777)", p.display())
        );
        chmod(&p, 0o664);
        assert_eq!(
            policy.check_file(&p).unwrap_err().reason(),
            "writable by group (mode 0664)"
        );
        chmod(&p, 0o600);
        policy.check_file(&p).unwrap();
    }

    #[test]
    fn another_owner_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.so");
        file(&p, 0o644);
        let me = TrustPolicy::current_user().uid();
        let (policy, owner) = if me == 0 {
            // As root, hand the file to an ordinary user.
            rustix::fs::chown(&p, Some(rustix::fs::Uid::from_raw(1000)), None).unwrap();
            (TrustPolicy::current_user(), 1000)
        } else {
            // Otherwise, a policy for some other user: our own files are foreign to it.
            (TrustPolicy::with_uid(me + 1), me)
        };
        let e = policy.check_file(&p).unwrap_err();
        assert_eq!(e.reason(), format!("owned by uid {owner}"));
        assert!(policy.open(&p).is_err());
    }

    #[test]
    fn writable_directories_are_refused_but_sticky_root_dirs_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("plugins");
        fs::create_dir(&d).unwrap();
        let p = d.join("x.wasm");
        file(&p, 0o644);
        let policy = TrustPolicy::current_user();
        policy.check_file(&p).unwrap();
        policy.check_dir(&d).unwrap();
        chmod(&d, 0o777);
        let e = policy.check_file(&p).unwrap_err();
        assert_eq!(e.culprit, d);
        assert_eq!(
            e.reason(),
            format!("directory {} is writable by others (mode 0777)", d.display())
        );
        assert!(policy.check_dir(&d).is_err());
        // Sticky alone is not enough unless root owns it.
        chmod(&d, 0o1777);
        assert_eq!(policy.check_file(&p).is_ok(), policy.uid() == 0);
    }

    #[test]
    fn symlinks_are_followed_and_their_targets_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("plugins");
        let build = tmp.path().join("build");
        fs::create_dir(&plugins).unwrap();
        fs::create_dir(&build).unwrap();
        let target = build.join("x.so");
        file(&target, 0o644);
        let link = plugins.join("x.so");
        symlink(&target, &link).unwrap();
        let policy = TrustPolicy::current_user();
        policy.check_file(&link).unwrap();
        chmod(&build, 0o777);
        let e = policy.check_file(&link).unwrap_err();
        let real_build = fs::canonicalize(&build).unwrap();
        assert_eq!(
            e.reason(),
            format!("symlink into {}, writable by others (mode 0777)", real_build.display())
        );
        chmod(&build, 0o755);
        chmod(&target, 0o646);
        let e = policy.check_file(&link).unwrap_err();
        assert!(e.reason().starts_with("symlink to "), "{e}");
        assert!(e.reason().ends_with("writable by others (mode 0646)"), "{e}");
    }

    #[test]
    fn open_reads_what_was_checked_and_refuses_fifos() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("h.toml");
        fs::write(&p, b"timeout = 1\n").unwrap();
        chmod(&p, 0o644);
        let policy = TrustPolicy::current_user();
        assert_eq!(policy.read(&p).unwrap(), b"timeout = 1\n");
        let fifo = tmp.path().join("f.toml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = policy.read(&fifo).unwrap_err();
        assert_eq!(e.reason(), "not a regular file");
        let missing = policy.read(&tmp.path().join("none")).unwrap_err();
        assert!(matches!(missing.problem, Problem::Io(_)));
    }
}
