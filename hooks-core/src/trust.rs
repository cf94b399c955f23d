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
//! use virt_hooks_core::trust::TrustPolicy;
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
    /// What it would run cannot be known without running it, or is not there yet: an
    /// `env -S` string that expands a variable or changes directory, a relative path, a
    /// file named on a `#!` line that does not exist (whoever creates it first would
    /// have it run). The text says which.
    Unverifiable(String),
    /// Something that runs with it fails the rule (a script's interpreter).
    Dependency {
        /// What it is to the file: `interpreter`, `library path`.
        role: &'static str,
        /// Why it fails.
        why: Box<Untrusted>,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Owner { uid } => write!(f, "owned by uid {uid}"),
            Problem::WritableByOthers { mode } => write!(f, "writable by others (mode {mode:04o})"),
            Problem::WritableByGroup { mode } => write!(f, "writable by group (mode {mode:04o})"),
            Problem::NotRegular => f.write_str("not a regular file"),
            Problem::Io(e) => write!(f, "cannot be examined: {e}"),
            Problem::Unverifiable(why) => f.write_str(why),
            Problem::Dependency { role, why } => write!(f, "its {role} `{}`: {}", why.path.display(), why.reason()),
        }
    }
}

/// What failed the rule, relative to the path that was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CulpritKind {
    /// The file (or directory) that was checked.
    Itself,
    /// A directory on the way to it.
    Directory,
    /// A symlink on the way to it.
    Symlink,
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
    /// What the culprit is: the file, a directory on the way, or a symlink on the way.
    pub culprit_kind: CulpritKind,
    /// What is wrong with the culprit.
    pub problem: Problem,
}

impl Untrusted {
    pub(crate) fn new(path: &Path, culprit: &Path, kind: CulpritKind, through_symlink: bool, problem: Problem) -> Self {
        Untrusted {
            path: path.to_owned(),
            culprit: culprit.to_owned(),
            through_symlink,
            culprit_kind: kind,
            problem,
        }
    }

    pub(crate) fn file(path: &Path, culprit: &Path, through_symlink: bool, problem: Problem) -> Self {
        Self::new(path, culprit, CulpritKind::Itself, through_symlink, problem)
    }

    /// A file refused because something that runs with it (`role`: `interpreter`, ...)
    /// fails the rule for `why`.
    pub fn dependency(path: &Path, role: &'static str, why: Untrusted) -> Self {
        Self::file(
            path,
            path,
            false,
            Problem::Dependency {
                role,
                why: Box::new(why),
            },
        )
    }

    /// A path refused because what it makes run cannot be worked out before it runs
    /// (`why` says what and why).
    pub fn unverifiable(path: &Path, why: impl Into<String>) -> Self {
        Self::file(path, path, false, Problem::Unverifiable(why.into()))
    }

    /// A path refused because `culprit` (it, or something on the way to it) cannot be
    /// examined or used, for this reason.
    pub fn io(path: &Path, culprit: &Path, e: io::Error) -> Self {
        Self::file(path, culprit, false, Problem::Io(Arc::new(e)))
    }

    /// The reason without the path: `writable by others (mode 0777)`, `directory
    /// /srv/hooks is owned by uid 1000`, `symlink into /home/dev/build, owned by uid 1000`.
    pub fn reason(&self) -> String {
        let (problem, culprit) = (&self.problem, self.culprit.display());
        match (self.culprit_kind, self.through_symlink, problem) {
            (CulpritKind::Itself, false, _) => problem.to_string(),
            (CulpritKind::Itself, true, _) => format!("symlink to {culprit}, {problem}"),
            (CulpritKind::Directory, _, Problem::Io(e)) => format!("cannot examine directory {culprit}: {e}"),
            (CulpritKind::Directory, false, _) => format!("directory {culprit} is {problem}"),
            (CulpritKind::Directory, true, _) => format!("symlink into {culprit}, {problem}"),
            (CulpritKind::Symlink, _, Problem::Io(e)) => format!("cannot follow symlink {culprit}: {e}"),
            (CulpritKind::Symlink, _, _) => format!("symlink {culprit} is {problem}"),
        }
    }

    /// Whether it failed only because the file (or a directory on the way) does not
    /// exist.
    pub fn is_not_found(&self) -> bool {
        matches!(&self.problem, Problem::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }

    fn describe(&self) -> String {
        format!("`{}`: {}", self.path.display(), self.reason())
    }
}

/// What a walk from `/` found at the end of a path.
struct Resolved {
    /// The path with every symlink resolved.
    real: PathBuf,
    /// `lstat` of `real` (never a symlink).
    meta: Metadata,
    /// Whether a symlink was followed on the way.
    linked: bool,
}

/// The most symlinks followed in one path (the kernel's limit).
const MAX_LINKS: u32 = 40;

/// The most a settings file read through [`TrustPolicy::read`] may hold.
pub const MAX_SETTINGS_BYTES: u64 = 1 << 20;

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

    /// Walks `path` from `/` one component at a time, following symlinks itself: every
    /// directory passed must pass [`TrustPolicy::dir_problem`] (a root-owned sticky one
    /// may be passed through), and every symlink must be owned by a trusted user, since
    /// in a sticky directory its owner may replace it.
    fn resolve(&self, asked: &Path, path: &Path) -> Result<Resolved, Untrusted> {
        use std::ffi::OsString;
        let absolute = std::path::absolute(path).map_err(|e| Untrusted::io(asked, path, e))?;
        let push = |pending: &mut Vec<OsString>, p: &Path| {
            for c in p.components().rev() {
                match c {
                    Component::Normal(n) => pending.push(n.to_owned()),
                    Component::ParentDir => pending.push("..".into()),
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                }
            }
        };
        let mut pending = Vec::new();
        push(&mut pending, &absolute);
        let mut real = PathBuf::from("/");
        let mut meta = fs::symlink_metadata(&real).map_err(|e| Untrusted::io(asked, &real, e))?;
        let (mut linked, mut links) = (false, 0);
        while let Some(name) = pending.pop() {
            if name == ".." {
                real.pop();
                meta = fs::symlink_metadata(&real).map_err(|e| Untrusted::io(asked, &real, e))?;
                continue;
            }
            // `meta` is the directory we are in: passing through it needs the rule.
            if !meta.is_dir() {
                let e = io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error());
                return Err(Untrusted::new(
                    asked,
                    &real,
                    CulpritKind::Directory,
                    linked,
                    Problem::Io(Arc::new(e)),
                ));
            }
            if let Some(problem) = self.dir_problem(&meta) {
                return Err(Untrusted::new(asked, &real, CulpritKind::Directory, linked, problem));
            }
            let next = real.join(&name);
            let next_meta = fs::symlink_metadata(&next)
                .map_err(|e| Untrusted::new(asked, &next, CulpritKind::Itself, linked, Problem::Io(Arc::new(e))))?;
            if next_meta.file_type().is_symlink() {
                if !self.trusted_owner(next_meta.uid()) {
                    let problem = Problem::Owner { uid: next_meta.uid() };
                    return Err(Untrusted::new(asked, &next, CulpritKind::Symlink, linked, problem));
                }
                links += 1;
                let target = if links <= MAX_LINKS {
                    fs::read_link(&next)
                } else {
                    Err(io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error()))
                };
                let target = target.map_err(|e| {
                    Untrusted::new(asked, &next, CulpritKind::Symlink, linked, Problem::Io(Arc::new(e)))
                })?;
                if target.is_absolute() {
                    real = PathBuf::from("/");
                    meta = fs::symlink_metadata(&real).map_err(|e| Untrusted::io(asked, &real, e))?;
                }
                push(&mut pending, &target);
                linked = true;
                continue;
            }
            real = next;
            meta = next_meta;
        }
        Ok(Resolved { real, meta, linked })
    }

    /// The strict test for the directory that holds an entry, or that is checked
    /// itself: a sticky bit is no excuse there (others could add or swap entries).
    fn holder_problem(&self, asked: &Path, dir: &Path, linked: bool, kind: CulpritKind) -> Result<(), Untrusted> {
        let meta = fs::symlink_metadata(dir).map_err(|e| Untrusted::io(asked, dir, e))?;
        if !meta.is_dir() {
            let e = io::Error::from_raw_os_error(rustix::io::Errno::NOTDIR.raw_os_error());
            return Err(Untrusted::new(asked, dir, kind, linked, Problem::Io(Arc::new(e))));
        }
        match self.owner_and_mode(&meta) {
            Some(problem) => Err(Untrusted::new(asked, dir, kind, linked, problem)),
            None => Ok(()),
        }
    }

    /// Checks a directory and every directory above it, following symlinks (whose
    /// owners must be trusted too). The directory itself may not be sticky.
    ///
    /// # Errors
    /// [`Untrusted`] naming the first directory or symlink that fails.
    pub fn check_dir(&self, dir: &Path) -> Result<(), Untrusted> {
        let found = self.resolve(dir, dir)?;
        let kind = if found.linked {
            CulpritKind::Directory
        } else {
            CulpritKind::Itself
        };
        self.holder_problem(dir, &found.real, found.linked, kind)
    }

    /// Checks a file: every directory and symlink on the way (as given and after
    /// following symlinks), the directory that holds it (which may not be sticky), and
    /// the file itself.
    ///
    /// # Errors
    /// [`Untrusted`] naming what fails and why.
    pub fn check_file(&self, path: &Path) -> Result<(), Untrusted> {
        self.check_file_meta(path).map(drop)
    }

    /// [`TrustPolicy::check_file`], returning the real path and its metadata.
    fn check_file_meta(&self, path: &Path) -> Result<(PathBuf, Metadata, bool), Untrusted> {
        let found = self.resolve(path, path)?;
        let holder = found.real.parent().unwrap_or(Path::new("/"));
        self.holder_problem(path, holder, found.linked, CulpritKind::Directory)?;
        self.file_problem(&found.meta)
            .map_err(|p| Untrusted::file(path, &found.real, found.linked, p))?;
        Ok((found.real, found.meta, found.linked))
    }

    /// Checks a file and opens it for reading; the open file is checked again (`fstat`)
    /// and must be the file that was checked, so nothing can be swapped in between.
    ///
    /// # Errors
    /// [`Untrusted`], or `Problem::Io` when it cannot be opened.
    pub fn open(&self, path: &Path) -> Result<File, Untrusted> {
        let (real, checked, linked) = self.check_file_meta(path)?;
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

    /// Reads a settings file through [`TrustPolicy::open`], at most
    /// [`MAX_SETTINGS_BYTES`] (a symlink to `/proc/self/pagemap` passes the rule, and
    /// must not eat the host's memory).
    ///
    /// # Errors
    /// [`Untrusted`], including read errors and a file too large as `Problem::Io`.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, Untrusted> {
        use std::io::Read;
        let file = self.open(path)?;
        let mut data = Vec::new();
        file.take(MAX_SETTINGS_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| Untrusted::io(path, path, e))?;
        if data.len() as u64 > MAX_SETTINGS_BYTES {
            let e = io::Error::other(format!("larger than {MAX_SETTINGS_BYTES} bytes"));
            return Err(Untrusted::io(path, path, e));
        }
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
        // The directory that holds the file may never be sticky-and-writable: others
        // could add and swap their own entries there.
        chmod(&d, 0o1777);
        assert!(policy.check_file(&p).is_err());
        assert!(policy.check_dir(&d).is_err());
        // As an ancestor, a root-owned sticky dir is fine (this temp dir is under /tmp).
        assert_eq!(fs::metadata("/tmp").unwrap().mode() & 0o1000, 0o1000);
        chmod(&d, 0o755);
        policy.check_file(&p).unwrap();
    }

    #[test]
    fn a_symlink_on_the_way_must_be_owned_by_a_trusted_user() {
        if TrustPolicy::current_user().uid() != 0 {
            eprintln!("SKIPPED a_symlink_on_the_way_must_be_owned_by_a_trusted_user: lchown needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("deny.sh");
        file(&target, 0o755);
        // /tmp/x -> deny.sh, owned by a user: in a sticky dir its owner may swap it.
        let hop = tmp.path().join("hop");
        symlink(&target, &hop).unwrap();
        let entry = tmp.path().join("80-deny");
        symlink(&hop, &entry).unwrap();
        let policy = TrustPolicy::current_user();
        policy.check_file(&entry).unwrap();
        rustix::fs::chownat(
            rustix::fs::CWD,
            &hop,
            Some(rustix::fs::Uid::from_raw(1000)),
            None,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let e = policy.check_file(&entry).unwrap_err();
        assert_eq!(e.culprit_kind, CulpritKind::Symlink);
        assert_eq!(e.reason(), format!("symlink {} is owned by uid 1000", hop.display()));
    }

    #[test]
    fn missing_targets_and_loops_are_errors_not_hangs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        let policy = TrustPolicy::current_user();
        assert!(policy.check_file(&a).unwrap_err().reason().contains("symlink"));
        let dangling = tmp.path().join("dangling");
        symlink(tmp.path().join("none"), &dangling).unwrap();
        assert!(policy.check_file(&dangling).unwrap_err().is_not_found());
        // Through `..` and relative links too.
        fs::create_dir(tmp.path().join("d")).unwrap();
        file(&tmp.path().join("f"), 0o644);
        symlink("../f", tmp.path().join("d/rel")).unwrap();
        policy.check_file(&tmp.path().join("d/rel")).unwrap();
        policy.check_file(&tmp.path().join("d/../f")).unwrap();
    }

    #[test]
    fn settings_reads_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("big.toml");
        fs::write(&p, vec![b'#'; MAX_SETTINGS_BYTES as usize + 1]).unwrap();
        let e = TrustPolicy::current_user().read(&p).unwrap_err();
        assert!(e.reason().contains("larger than"), "{e}");
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
