//! Per-object state: a directory that a hook asking for it (`state = true` in its
//! sidecar) keeps from an object's first event until after its last, so that what it did
//! at `start` is still known at `release`, whatever its configuration says by then.
//!
//! Layout: `<root>/<driver>/<object>/<plugin file name>/`, every level owned by the
//! effective user and mode 0700. The last event of an object (`release end` for guests,
//! `stopped end` for networks) removes its directories, except those of hooks that
//! failed it: they are kept, with a note under `<root>/.kept/`, for the operator.
//!
//! A root belongs to one hooks dir: the last event removes every directory of the
//! object under it, whichever registry made it.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use crate::trust::TrustPolicy;
use crate::{Driver, HookEvent};

/// Where hookctl keeps state unless its `hookctl.toml` says otherwise: on tmpfs, so it
/// goes with the guests at a reboot.
pub const SYSTEM_STATE_ROOT: &str = "/run/virt-hooks/state";

/// The default cap on a WASM hook's state directory (`state_max`): 1 MiB.
pub const DEFAULT_STATE_MAX: u64 = 1 << 20;

/// Where notes on kept directories go: a name no driver has.
const KEPT: &str = ".kept";

/// Most bytes of a note that [`StateRoot::entries`] reads.
const MAX_NOTE: u64 = 4096;

/// The root of the state directories of one hooks dir.
///
/// ```
/// use virt_hooks_core::Driver;
/// use virt_hooks_core::state::StateRoot;
/// let tmp = tempfile::tempdir().unwrap();
/// let root = StateRoot::new(tmp.path().join("state"));
/// let dir = root.open(Driver::Qemu, "web1".as_ref(), "10-forward".as_ref()).unwrap();
/// assert!(dir.ends_with("qemu/web1/10-forward"));
/// assert!(root.open(Driver::Qemu, "../etc".as_ref(), "10-forward".as_ref()).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRoot {
    root: PathBuf,
}

/// A state directory that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The object's or the hook's name cannot name a directory.
    #[error("{what} {name:?} cannot name a state directory (empty, `.`, `..`, longer than 255 bytes, or holds `/`)")]
    BadName {
        /// `object` or `hook file name`.
        what: &'static str,
        /// The name.
        name: OsString,
    },
    /// Daemon events have no object.
    #[error("daemon events have no object to keep state for")]
    NoObject,
    /// The hook asks for state, and whoever runs it keeps none.
    #[error("the hook asks for a state directory (`state = true`) but whoever runs it keeps none (libvirt itself never does; hookctl's dispatcher does for `<driver>.plugins/`)")]
    NoRoot,
    /// A directory on the way is not safe to use.
    #[error("state directory refused: {why}: `{}`", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A directory holds a mount point (or is one): removing it would empty another
    /// file system.
    #[error("{}", holds_mount(path, mount))]
    HoldsMount {
        /// The directory.
        path: PathBuf,
        /// The mount point in it.
        mount: PathBuf,
    },
    /// The file system said no.
    #[error("state directory: {cause}: `{}`", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the OS said (in the message, not a `source`, so it is said once).
        cause: io::Error,
    },
}

/// A state directory found under a root, for `hookctl list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The object (guest or network).
    pub object: OsString,
    /// The hook's file name.
    pub hook: OsString,
    /// The directory.
    pub path: PathBuf,
    /// Why it was kept past the object's last event, when it was ([escaped](crate::text::escape)).
    pub kept: Option<String>,
}

/// Whether an event is its object's last: `release end` for guests, `stopped end` for
/// networks. Daemon events have no object.
///
/// ```
/// use virt_hooks_core::{Driver, RawEvent};
/// use virt_hooks_core::state::state_ends_object;
/// assert!(state_ends_object(&RawEvent::new(Driver::Qemu, ["vm", "release", "end", "-"])));
/// assert!(!state_ends_object(&RawEvent::new(Driver::Qemu, ["vm", "stopped", "end", "-"])));
/// assert!(state_ends_object(&RawEvent::new(Driver::Network, ["net", "stopped", "end", "-"])));
/// ```
pub fn state_ends_object(event: &dyn HookEvent) -> bool {
    state_ends_at(event.driver(), event.op(), event.subop())
}

/// [`state_ends_object`] from the driver, the operation and the sub-operation (for a
/// backend that has an [`crate::Invocation`], not the event).
pub fn state_ends_at(driver: Driver, op: &str, subop: &str) -> bool {
    match driver {
        Driver::Daemon => false,
        Driver::Network => op == "stopped" && subop == "end",
        _ => op == "release" && subop == "end",
    }
}

/// Whether an event opens an object's lifecycle here and, when it fails, is followed by
/// no last event: a guest's `migrate begin` and `restore begin` (libvirt runs them before
/// it has the guest; a refusal ends there, with no `release`), and a network's `start
/// begin` (a refused start sends no `stopped end`). State made at such a failed event
/// goes to [`StateRoot::abandon`].
///
/// ```
/// use virt_hooks_core::{Driver, RawEvent};
/// use virt_hooks_core::state::state_orphaned_by_failure;
/// assert!(state_orphaned_by_failure(&RawEvent::new(Driver::Qemu, ["vm", "restore", "begin", "-"])));
/// assert!(!state_orphaned_by_failure(&RawEvent::new(Driver::Qemu, ["vm", "prepare", "begin", "-"])));
/// ```
pub fn state_orphaned_by_failure(event: &dyn HookEvent) -> bool {
    let opens = match event.driver() {
        Driver::Daemon => false,
        Driver::Network => event.op() == "start",
        _ => matches!(event.op(), "migrate" | "restore"),
    };
    opens && event.subop() == "begin"
}

fn check_name(what: &'static str, name: &OsStr) -> Result<(), StateError> {
    let bytes = name.as_bytes();
    let bad = bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.len() > 255 || bytes.contains(&b'/');
    if bad || bytes.contains(&0) {
        return Err(StateError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |cause| StateError::Io {
        path: path.to_owned(),
        cause,
    }
}

fn refused(path: &Path, why: String) -> StateError {
    StateError::Refused {
        path: path.to_owned(),
        why,
    }
}

/// Why `meta` is not a directory of ours that only we may write, if it is not.
fn not_ours(meta: &fs::Metadata) -> Option<String> {
    let euid = rustix::process::geteuid().as_raw();
    if meta.file_type().is_symlink() {
        Some("it is a symbolic link".into())
    } else if !meta.is_dir() {
        Some("it is not a directory".into())
    } else if meta.uid() != euid {
        Some(format!("owned by uid {}, not {euid}", meta.uid()))
    } else {
        None
    }
}

/// Makes `path` (its parent exists and is ours) a directory of ours, mode 0700, or
/// checks that it is one: never follows a symlink, never accepts someone else's.
fn own_dir(path: &Path) -> Result<(), StateError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(path)(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(io_error(path))?;
    if let Some(why) = not_ours(&meta) {
        return Err(refused(path, why));
    }
    if meta.mode() & 0o7077 != 0 {
        // Ours, and the 0700 levels above keep everyone else out: put the mode back
        // rather than lock the object out for a plugin's chmod.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error(path))?;
    }
    Ok(())
}

/// Checks that `path` is a directory of ours that nobody else may write, without
/// creating or changing it; `Ok(false)` when it does not exist.
fn is_own_dir(path: &Path) -> Result<bool, StateError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(path)(e)),
    };
    let why = not_ours(&meta).or_else(|| {
        (meta.mode() & 0o022 != 0).then(|| format!("mode {:04o} lets others write to it", meta.mode() & 0o7777))
    });
    match why {
        Some(why) => Err(refused(path, why)),
        None => Ok(true),
    }
}

/// The parent of a state root must pass the trust rule; a root-owned sticky parent
/// (`/tmp`) counts as its own parent, since the root in it must be ours anyway.
fn trusted_holder(dir: &Path) -> Result<(), StateError> {
    let sticky = fs::metadata(dir).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o1000 != 0);
    let checked = match dir.parent() {
        Some(up) if sticky => up,
        _ => dir,
    };
    TrustPolicy::current_user()
        .check_dir(checked)
        .map_err(|why| refused(dir, why.reason()))
}

/// A note, if it is a regular file of ours (never a link, a FIFO or a device).
fn read_note(path: &Path) -> Option<String> {
    use std::io::Read;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != rustix::process::geteuid().as_raw() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_NOTE).read_to_string(&mut text).ok()?;
    // Escaped again, for a note written by an older version or by hand.
    Some(crate::text::escape(text.trim_end()).into_owned())
}

/// [`StateError::HoldsMount`]'s message: the cause first, since a path in a tree may be
/// longer than the caps on messages.
fn holds_mount(path: &Path, mount: &Path) -> String {
    match mount.strip_prefix(path) {
        Ok(inside) if inside.as_os_str().is_empty() => {
            format!("is a mount point, so not removed: state directory `{}`", path.display())
        }
        Ok(inside) => format!(
            "holds a mount point, so not removed: state directory `{}`, mount point `{}` in it",
            path.display(),
            inside.display()
        ),
        Err(_) => format!(
            "holds a mount point, so not removed: state directory `{}`, mount point `{}`",
            path.display(),
            mount.display()
        ),
    }
}

/// Opens the directory `name` in `at`, never through a link.
fn open_dir_at(at: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(at, name, flags, Mode::empty())
}

/// The entry `name` of `at` opened, if it is a directory (not a link to one).
fn open_if_dir(at: BorrowedFd<'_>, name: &CStr, kind: FileType) -> rustix::io::Result<Option<OwnedFd>> {
    if !matches!(kind, FileType::Directory | FileType::Unknown) {
        return Ok(None);
    }
    match open_dir_at(at, name) {
        Ok(dir) => Ok(Some(dir)),
        // A link, or no longer a directory.
        Err(Errno::NOTDIR | Errno::LOOP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Which directory a walk is in, and on which mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirId {
    dev: (u32, u32),
    ino: u64,
    mount: u64,
}

fn dir_id(dir: BorrowedFd<'_>) -> io::Result<DirId> {
    let stx = rustix::fs::statx(dir, c"", AtFlags::EMPTY_PATH, StatxFlags::INO | StatxFlags::MNT_ID)?;
    // Bind mounts of one file system share its device: mount IDs tell them apart. A
    // kernel before 5.8 has none; the device still tells other file systems apart.
    let mount = if stx.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        stx.stx_mnt_id
    } else {
        (u64::from(stx.stx_dev_major) << 32) | u64::from(stx.stx_dev_minor)
    };
    Ok(DirId {
        dev: (stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        mount,
    })
}

/// What [`walk_tree`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Looks for a mount point, changing nothing.
    FindMount,
    /// Removes everything, down to a mount point if it meets one.
    Empty,
}

/// A level that [`walk_tree`] went down from.
struct Above {
    id: DirId,
    /// The directory it went into.
    name: CString,
    /// Where to read on: the position after `name`.
    resume: i64,
}

/// Walks the tree below the directory `top` (at `path`, for messages) depth first, and
/// returns the first directory in it on another mount than `mount`, where it stopped.
/// [`Walk::Empty`] removes what it passes (links, not what they name).
///
/// Any depth and any length of names: it holds no path to open, and two descriptors at
/// most. A level is opened from the one above and left through its `..`, which must be
/// the directory it came from, or the walk fails (something moved the tree meanwhile).
fn walk_tree(top: BorrowedFd<'_>, path: &Path, mount: u64, walk: Walk) -> Result<Option<PathBuf>, StateError> {
    let errno = |at: &Path, e: Errno| io_error(at)(e.into());
    let mut at = path.to_owned();
    let mut id = dir_id(top).map_err(io_error(&at))?;
    let mut level = Dir::read_from(top).map_err(|e| errno(&at, e))?;
    let mut above: Vec<Above> = Vec::new();
    // Whether `level` was read on from a position: after removals, a file system whose
    // positions count entries (tmpfs before Linux 6.6) skips some, so it is read again.
    let mut resumed = false;
    loop {
        let mut below = None;
        while let Some(entry) = level.read() {
            let entry = entry.map_err(|e| errno(&at, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let here = level.fd().map_err(|e| errno(&at, e))?;
            let child = at.join(OsStr::from_bytes(name.to_bytes()));
            let dir = match open_if_dir(here, name, entry.file_type()) {
                Ok(Some(dir)) => dir,
                Ok(None) if walk == Walk::Empty => match rustix::fs::unlinkat(here, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => continue,
                    Err(e) => return Err(errno(&child, e)),
                },
                Ok(None) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(errno(&child, e)),
            };
            let dir_id = dir_id(dir.as_fd()).map_err(io_error(&child))?;
            if dir_id.mount != mount {
                return Ok(Some(child));
            }
            below = Some((dir, dir_id, name.to_owned(), entry.offset(), child));
            break;
        }
        if let Some((dir, dir_id, name, resume, child)) = below {
            above.push(Above { id, name, resume });
            (id, at, resumed) = (dir_id, child, false);
            level = Dir::new(dir).map_err(|e| errno(&at, e))?;
            continue;
        }
        if resumed && walk == Walk::Empty {
            level.rewind();
            resumed = false;
            continue;
        }
        let Some(up) = above.pop() else {
            return Ok(None);
        };
        let here = level.fd().map_err(|e| errno(&at, e))?;
        let parent = open_dir_at(here, c"..").map_err(|e| errno(&at, e))?;
        if dir_id(parent.as_fd()).map_err(io_error(&at))? != up.id {
            return Err(refused(&at, "it was moved while its tree was walked".into()));
        }
        if walk == Walk::Empty {
            match rustix::fs::unlinkat(&parent, &up.name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(errno(&at, e)),
            }
        }
        at.pop();
        id = up.id;
        level = Dir::new(parent).map_err(|e| errno(&at, e))?;
        level.seek(up.resume).map_err(|e| errno(&at, e))?;
        resumed = true;
    }
}

/// The first mount point in the open directory `dir` (at `path`), or `dir` itself if
/// it is one: a directory on another mount than `mount`, its object's.
fn mount_in(dir: BorrowedFd<'_>, path: &Path, mount: u64) -> Result<Option<PathBuf>, StateError> {
    if dir_id(dir).map_err(io_error(path))?.mount != mount {
        return Ok(Some(path.to_owned()));
    }
    walk_tree(dir, path, mount, Walk::FindMount)
}

/// Removes the directory `name` of `object` (open as `dir`, at `path`) and all it
/// holds; stops at a mount point, which it names.
fn remove_tree(
    object: BorrowedFd<'_>,
    name: &CStr,
    dir: BorrowedFd<'_>,
    path: &Path,
    mount: u64,
) -> Result<(), StateError> {
    if let Some(inner) = walk_tree(dir, path, mount, Walk::Empty)? {
        return Err(StateError::HoldsMount {
            path: path.to_owned(),
            mount: inner,
        });
    }
    match rustix::fs::unlinkat(object, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_error(path)(e.into())),
    }
}

impl StateRoot {
    /// A root at `path`; nothing is created until a hook asks for its directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateRoot { root: path.into() }
    }

    /// [`SYSTEM_STATE_ROOT`], hookctl's. Another program's hooks should keep state under
    /// a root of their own: the last event of an object removes every directory of it.
    pub fn system() -> Self {
        Self::new(SYSTEM_STATE_ROOT)
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory of `hook` (its file name) for `object`, without creating it.
    ///
    /// # Errors
    /// When the driver has no objects or a name cannot name a directory.
    pub fn dir(&self, driver: Driver, object: &OsStr, hook: &OsStr) -> Result<PathBuf, StateError> {
        if driver == Driver::Daemon {
            return Err(StateError::NoObject);
        }
        check_name("object", object)?;
        check_name("hook file name", hook)?;
        Ok(self.root.join(driver.as_str()).join(object).join(hook))
    }

    /// The directory of `hook` for `object`, created (with the root) when missing.
    ///
    /// The root's parent must pass the trust rule, and the root and each level below
    /// must be directories (not links) of the effective user; each is made, or put
    /// back, mode 0700: state is private to the hooks, and nobody else may swap a level
    /// for a link.
    ///
    /// # Errors
    /// A [`StateError`] naming the directory and what is wrong with it.
    pub fn open(&self, driver: Driver, object: &OsStr, hook: &OsStr) -> Result<PathBuf, StateError> {
        let dir = self.dir(driver, object, hook)?;
        self.check_root(true)?;
        let mut path = self.root.join(driver.as_str());
        own_dir(&path)?;
        path.push(object);
        own_dir(&path)?;
        path.push(hook);
        own_dir(&path)?;
        debug_assert_eq!(path, dir);
        // In use again: a note from an earlier lifecycle no longer describes it (the
        // next failed last event writes a new one).
        let note = self.root.join(KEPT).join(driver.as_str()).join(object).join(hook);
        if fs::symlink_metadata(&note).is_ok() {
            let _ = fs::remove_file(&note);
        }
        Ok(path)
    }

    /// Checks the root without creating anything: an absolute path without `..` whose
    /// parent passes the trust rule, and, when it exists, a directory of the effective
    /// user that only it may write. `hookctl check` reports what this says.
    ///
    /// # Errors
    /// A [`StateError`] naming the directory that fails, and why.
    pub fn check(&self) -> Result<(), StateError> {
        self.check_root(false)
    }

    /// Whether `object` may have state directories here: one `lstat`, so that an
    /// object's last event costs nothing more when no hook kept state for it.
    pub fn holds(&self, driver: Driver, object: &OsStr) -> bool {
        driver != Driver::Daemon
            && check_name("object", object).is_ok()
            && fs::symlink_metadata(self.root.join(driver.as_str()).join(object)).is_ok()
    }

    /// `object`'s level, when the root and every level down to it are directories of
    /// the effective user that only it may write (else `None`: nothing there is ours to
    /// remove).
    fn own_object_dir(&self, driver: Driver, object: &OsStr) -> Result<Option<PathBuf>, StateError> {
        self.check_root(false)?;
        let dir = self.root.join(driver.as_str()).join(object);
        for level in [self.root.as_path(), &self.root.join(driver.as_str()), &dir] {
            if !is_own_dir(level)? {
                return Ok(None);
            }
        }
        Ok(Some(dir))
    }

    /// The checks of [`StateRoot::check`]; with `create`, a missing root (and missing
    /// levels above it, below a trusted ancestor) is created 0700.
    fn check_root(&self, create: bool) -> Result<(), StateError> {
        if !self.root.is_absolute() {
            return Err(refused(&self.root, "not an absolute path".into()));
        }
        if self.root.components().any(|c| c == Component::ParentDir) {
            return Err(refused(&self.root, "it holds `..`".into()));
        }
        let Some(parent) = self.root.parent() else {
            return Err(refused(&self.root, "`/` cannot be a state root".into()));
        };
        // The nearest existing ancestor must be trusted before anything is made in it.
        let mut existing = parent;
        while fs::symlink_metadata(existing).is_err() {
            match existing.parent() {
                Some(up) => existing = up,
                None => break,
            }
        }
        trusted_holder(existing)?;
        if existing != parent {
            if !create {
                return Ok(());
            }
            // `/run/virt-hooks` on a fresh boot: ours too, and private; one level at a
            // time, each checked, so that no link planted meanwhile is followed.
            let mut level = existing.to_owned();
            for part in parent.strip_prefix(existing).unwrap_or(parent) {
                level.push(part);
                own_dir(&level)?;
            }
        }
        if create {
            own_dir(&self.root)
        } else {
            is_own_dir(&self.root).map(drop)
        }
    }

    /// After an object's last event: removes its hooks' directories, except those for
    /// which `kept` gives a reason (the hook failed that event) and those that are or
    /// hold a mount point; a note with the reason goes to
    /// `<root>/.kept/<driver>/<object>/<hook>`. Returns the directories kept. Nothing is
    /// removed unless the root and the levels down to the object are directories of the
    /// effective user that only it may write. Trees are walked through descriptors, so
    /// no depth or length of names keeps one.
    ///
    /// # Errors
    /// A level that fails those checks, or the first directory that could not be
    /// removed or noted; the others are still handled.
    pub fn finish(
        &self,
        driver: Driver,
        object: &OsStr,
        kept: &dyn Fn(&OsStr) -> Option<String>,
    ) -> Result<Vec<PathBuf>, StateError> {
        if driver == Driver::Daemon || check_name("object", object).is_err() {
            return Ok(Vec::new());
        }
        let Some(dir) = self.own_object_dir(driver, object)? else {
            return Ok(Vec::new());
        };
        // Read through a descriptor: the hooks' trees are walked from it, never by path.
        let object_dir = match rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&dir)(e.into())),
        };
        // A hook's directory on another mount than its object's is, or holds, a mount point.
        let mount = dir_id(object_dir.as_fd()).map_err(io_error(&dir))?.mount;
        let mut entries = Dir::read_from(&object_dir).map_err(|e| io_error(&dir)(e.into()))?;
        let notes = self.root.join(KEPT).join(driver.as_str()).join(object);
        let mut first_error = None;
        let mut kept_dirs = Vec::new();
        while let Some(entry) = entries.read() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    first_error.get_or_insert(io_error(&dir)(e.into()));
                    continue;
                }
            };
            let c_name = entry.file_name();
            if c_name == c"." || c_name == c".." {
                continue;
            }
            let name = OsStr::from_bytes(c_name.to_bytes());
            let path = dir.join(name);
            let note = notes.join(name);
            let hook_dir = match open_if_dir(object_dir.as_fd(), c_name, entry.file_type()) {
                Err(Errno::NOENT) => continue,
                opened => opened,
            };
            let keep = kept(name).or_else(|| {
                let found = match &hook_dir {
                    Ok(Some(fd)) => mount_in(fd.as_fd(), &path, mount),
                    Ok(None) => Ok(None),
                    Err(e) => Err(io_error(&path)((*e).into())),
                };
                let e = match found {
                    Ok(None) => return None,
                    Ok(Some(inner)) => StateError::HoldsMount {
                        path: path.clone(),
                        mount: inner,
                    },
                    Err(e) => e,
                };
                let why = e.to_string();
                first_error.get_or_insert(e);
                Some(why)
            });
            let done = match (keep, hook_dir) {
                (Some(why), _) => {
                    kept_dirs.push(path.clone());
                    write_note(&self.root, &notes, &note, &why).map_err(io_error(&note))
                }
                (None, hook_dir) => {
                    // Never follows links: a hook's own symlinks go, not what they name.
                    let removed = match hook_dir {
                        Ok(Some(fd)) => remove_tree(object_dir.as_fd(), c_name, fd.as_fd(), &path, mount),
                        Err(e) => Err(io_error(&path)(e.into())),
                        Ok(None) => match rustix::fs::unlinkat(&object_dir, c_name, AtFlags::empty()) {
                            Ok(()) | Err(Errno::NOENT) => Ok(()),
                            Err(e) => Err(io_error(&path)(e.into())),
                        },
                    };
                    match fs::remove_file(&note) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => removed.and(Err(io_error(&note)(e))),
                        _ => removed,
                    }
                }
            };
            if let Err(e) = done {
                first_error.get_or_insert(e);
            }
        }
        // The object's empty levels go too (a level still in use stays: ENOTEMPTY); the
        // driver's levels stay, since another object's event may be making its own.
        for level in [dir, notes] {
            let _ = fs::remove_dir(level);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(kept_dirs),
        }
    }

    /// The file names of the hooks that have a directory for `object` (none when the
    /// object has no level, or it cannot be read).
    pub fn hooks_of(&self, driver: Driver, object: &OsStr) -> Vec<OsString> {
        if !self.holds(driver, object) {
            return Vec::new();
        }
        let Ok(entries) = fs::read_dir(self.root.join(driver.as_str()).join(object)) else {
            return Vec::new();
        };
        entries.filter_map(|e| e.ok().map(|e| e.file_name())).collect()
    }

    /// After a failed event that ended `object`'s lifecycle with no last event to follow
    /// ([`state_orphaned_by_failure`]): of its hooks' directories not in `before` (made
    /// during the event), an empty one goes, since nothing was recorded; any other is
    /// kept with `why` as its note, as after a failed last event. Directories in `before`
    /// are not touched (a guest of the same name may run). Returns the directories kept.
    ///
    /// # Errors
    /// A level that fails [`StateRoot::finish`]'s checks, or the first note that could
    /// not be written; the other directories are still handled.
    pub fn abandon(
        &self,
        driver: Driver,
        object: &OsStr,
        before: &[OsString],
        why: &str,
    ) -> Result<Vec<PathBuf>, StateError> {
        if driver == Driver::Daemon || check_name("object", object).is_err() {
            return Ok(Vec::new());
        }
        let made: Vec<OsString> = (self.hooks_of(driver, object).into_iter())
            .filter(|name| !before.contains(name))
            .collect();
        if made.is_empty() {
            return Ok(Vec::new());
        }
        let Some(dir) = self.own_object_dir(driver, object)? else {
            return Ok(Vec::new());
        };
        let notes = self.root.join(KEPT).join(driver.as_str()).join(object);
        let (mut kept, mut first_error) = (Vec::new(), None);
        for name in made {
            let path = dir.join(&name);
            // rmdir: only an empty directory goes (never a link, a file or a mount point).
            match fs::remove_dir(&path) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => {}
            }
            let note = notes.join(&name);
            if let Err(e) = write_note(&self.root, &notes, &note, why) {
                first_error.get_or_insert(io_error(&note)(e));
            }
            kept.push(path);
        }
        let _ = fs::remove_dir(&dir);
        match first_error {
            Some(e) => Err(e),
            None => Ok(kept),
        }
    }

    /// Removes the directory of `hook` (its file name) for `object`, and its note, as
    /// the object's last event would: only below levels that are directories of the
    /// effective user that only it may write, through descriptors, never following a
    /// link, and never into a mount point. For an operator clearing state by hand
    /// (`hookctl state clear`): whether the directory was in use is the caller's to ask.
    /// `Ok(false)` when there was nothing to remove.
    ///
    /// # Errors
    /// A name that cannot name a directory, a level that fails those checks, a
    /// directory that is or holds a mount point ([`StateError::HoldsMount`], nothing of
    /// it removed), or what the file system said.
    pub fn remove(&self, driver: Driver, object: &OsStr, hook: &OsStr) -> Result<bool, StateError> {
        let path = self.dir(driver, object, hook)?;
        let Some(dir) = self.own_object_dir(driver, object)? else {
            return Ok(false);
        };
        let object_dir = match rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_error(&dir)(e.into())),
        };
        let mount = dir_id(object_dir.as_fd()).map_err(io_error(&dir))?.mount;
        // `dir` checked the name: no NUL in it.
        let c_name = CString::new(hook.as_bytes()).map_err(|_| StateError::BadName {
            what: "hook file name",
            name: hook.to_owned(),
        })?;
        let removed = match open_if_dir(object_dir.as_fd(), &c_name, FileType::Unknown) {
            Ok(Some(fd)) => {
                if let Some(inner) = mount_in(fd.as_fd(), &path, mount)? {
                    return Err(StateError::HoldsMount { path, mount: inner });
                }
                remove_tree(object_dir.as_fd(), &c_name, fd.as_fd(), &path, mount)?;
                true
            }
            Ok(None) => match rustix::fs::unlinkat(&object_dir, &c_name, AtFlags::empty()) {
                Ok(()) => true,
                Err(Errno::NOENT) => false,
                Err(e) => return Err(io_error(&path)(e.into())),
            },
            Err(Errno::NOENT) => false,
            Err(e) => return Err(io_error(&path)(e.into())),
        };
        let notes = self.root.join(KEPT).join(driver.as_str()).join(object);
        let note = notes.join(hook);
        match fs::remove_file(&note) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(&note)(e)),
            _ => {}
        }
        // The object's levels go once empty, as after its last event.
        for level in [dir, notes] {
            let _ = fs::remove_dir(level);
        }
        Ok(removed)
    }

    /// Every state directory of `driver`'s objects, with the note of those kept past
    /// their object's last event. Empty when the root fails its checks.
    pub fn entries(&self, driver: Driver) -> Vec<StateEntry> {
        let mut found = Vec::new();
        let base = self.root.join(driver.as_str());
        if self.check_root(false).is_err() || !is_own_dir(&base).unwrap_or(false) {
            return found;
        }
        let Ok(objects) = fs::read_dir(&base) else { return found };
        for object in objects.flatten() {
            if !is_own_dir(&object.path()).unwrap_or(false) {
                continue;
            }
            let Ok(hooks) = fs::read_dir(object.path()) else {
                continue;
            };
            for hook in hooks.flatten() {
                let note = self
                    .root
                    .join(KEPT)
                    .join(driver.as_str())
                    .join(object.file_name())
                    .join(hook.file_name());
                found.push(StateEntry {
                    object: object.file_name(),
                    hook: hook.file_name(),
                    path: hook.path(),
                    kept: read_note(&note),
                });
            }
        }
        found.sort_by(|a, b| (&a.object, &a.hook).cmp(&(&b.object, &b.hook)));
        found
    }
}

fn write_note(root: &Path, notes: &Path, note: &Path, why: &str) -> io::Result<()> {
    let mut level = root.to_owned();
    for part in notes.strip_prefix(root).unwrap_or(notes) {
        level.push(part);
        own_dir(&level).map_err(|e| io::Error::other(e.to_string()))?;
    }
    let _ = fs::remove_file(note);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(note)?;
    // Escaped, so that the note is safe to `cat`, and short enough to be read whole.
    let why = crate::text::Limit::bytes(MAX_NOTE as usize - 1).escaped().apply(why);
    io::Write::write_all(&mut file, format!("{why}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn root() -> (tempfile::TempDir, StateRoot) {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::new(tmp.path().join("run/virt-hooks/state"));
        (tmp, root)
    }

    #[test]
    fn directories_are_created_private_and_reused() {
        let (_tmp, root) = root();
        let dir = root.open(Driver::Qemu, "vm".as_ref(), "10-fw".as_ref()).unwrap();
        fs::write(dir.join("rules"), "a\n").unwrap();
        for level in [
            root.path(),
            &root.path().join("qemu"),
            &root.path().join("qemu/vm"),
            &dir,
        ] {
            let meta = fs::symlink_metadata(level).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o700, "{}", level.display());
        }
        let again = root.open(Driver::Qemu, "vm".as_ref(), "10-fw".as_ref()).unwrap();
        assert_eq!(fs::read_to_string(again.join("rules")).unwrap(), "a\n");
    }

    #[test]
    fn names_that_would_leave_the_root_are_refused() {
        let (_tmp, root) = root();
        for object in ["", ".", "..", "a/b", "../../etc", "x\0y"] {
            let object = OsStr::from_bytes(object.as_bytes());
            let err = root.open(Driver::Qemu, object, "h".as_ref()).unwrap_err();
            assert!(
                matches!(err, StateError::BadName { what: "object", .. }),
                "{object:?}: {err}"
            );
        }
        let long = "x".repeat(256);
        assert!(root.open(Driver::Qemu, long.as_ref(), "h".as_ref()).is_err());
        assert!(matches!(
            root.open(Driver::Daemon, "-".as_ref(), "h".as_ref()),
            Err(StateError::NoObject)
        ));
        assert!(!root.path().exists(), "nothing is created for a refused name");
    }

    #[test]
    fn a_level_swapped_for_a_link_or_opened_up_is_refused() {
        let (tmp, root) = root();
        root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
        let object = root.path().join("qemu/other");
        symlink(&elsewhere, &object).unwrap();
        let err = root.open(Driver::Qemu, "other".as_ref(), "h".as_ref()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!elsewhere.join("h").exists(), "nothing was created through the link");
        // A level of ours opened up (a plugin's chmod) is put back, not a lock-out.
        let vm = root.path().join("qemu/vm/h");
        fs::set_permissions(&vm, fs::Permissions::from_mode(0o755)).unwrap();
        root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap();
        assert_eq!(fs::metadata(&vm).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn finish_never_removes_through_a_level_it_did_not_make() {
        let (tmp, root) = root();
        root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap();
        let victim = tmp.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("precious"), "x").unwrap();
        // An object level swapped for a link to someone else's directory.
        let object = root.path().join("qemu/web1");
        symlink(&victim, &object).unwrap();
        let err = root.finish(Driver::Qemu, "web1".as_ref(), &|_| None).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(victim.join("precious").exists());
        // A root others may write to: nothing below it is trusted.
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(root.finish(Driver::Qemu, "vm".as_ref(), &|_| None).is_err());
        assert!(root.path().join("qemu/vm/h").exists());
        assert!(root.entries(Driver::Qemu).is_empty());
    }

    #[test]
    fn notes_are_read_only_from_regular_files_and_shown_escaped() {
        let (_tmp, root) = root();
        root.open(Driver::Qemu, "vm".as_ref(), "a".as_ref()).unwrap();
        root.open(Driver::Qemu, "vm".as_ref(), "b".as_ref()).unwrap();
        let why = |name: &OsStr| match name.to_str() {
            Some("a") => Some("release end failed: \u{1b}]0;pwned\u{7}\u{202e}txt".to_owned()),
            _ => Some("release end failed".to_owned()),
        };
        root.finish(Driver::Qemu, "vm".as_ref(), &why).unwrap();
        // The note of `b` swapped for a link to something endless.
        let note_b = root.path().join(".kept/qemu/vm/b");
        fs::remove_file(&note_b).unwrap();
        symlink("/dev/zero", &note_b).unwrap();
        let entries = root.entries(Driver::Qemu);
        let a = entries.iter().find(|e| e.hook == "a").unwrap();
        let shown = a.kept.as_deref().unwrap();
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
        assert_eq!(shown, r"release end failed: \x1b]0;pwned\x07\u{202e}txt");
        assert_eq!(entries.iter().find(|e| e.hook == "b").unwrap().kept, None);
    }

    #[test]
    fn a_note_goes_when_the_plugin_uses_its_directory_again() {
        let (_tmp, root) = root();
        root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap();
        root.finish(Driver::Qemu, "vm".as_ref(), &|_| Some("failed".into()))
            .unwrap();
        assert!(root.entries(Driver::Qemu)[0].kept.is_some());
        root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap();
        assert_eq!(root.entries(Driver::Qemu)[0].kept, None, "the guest runs again");
    }

    #[test]
    fn a_root_in_a_sticky_directory_is_fine_once_it_is_ours_and_dotdot_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let sticky = tmp.path().join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let root = StateRoot::new(sticky.join("state"));
        // Only root's sticky directories count (as /tmp); the tempdir's is ours.
        let euid = rustix::process::geteuid().as_raw();
        if euid == 0 {
            root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap();
        }
        let dotted = StateRoot::new(tmp.path().join("gone/../state"));
        let err = dotted.check().unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
    }

    #[test]
    fn a_root_under_a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let root = StateRoot::new(open.join("state"));
        let err = root.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).unwrap_err();
        assert!(matches!(err, StateError::Refused { .. }), "{err}");
        assert!(!open.join("state").exists());
        let relative = StateRoot::new("state");
        assert!(relative.open(Driver::Qemu, "vm".as_ref(), "h".as_ref()).is_err());
    }

    #[test]
    fn the_last_event_removes_all_but_the_failed_hooks_directories() {
        let (tmp, root) = root();
        let ok = root.open(Driver::Qemu, "vm".as_ref(), "ok".as_ref()).unwrap();
        let failed = root.open(Driver::Qemu, "vm".as_ref(), "failed".as_ref()).unwrap();
        let other_vm = root.open(Driver::Qemu, "other".as_ref(), "ok".as_ref()).unwrap();
        // A hook's own link out of its directory: removing the directory leaves the target.
        let outside = tmp.path().join("outside");
        fs::write(&outside, "keep me").unwrap();
        symlink(&outside, ok.join("link")).unwrap();
        let why = |name: &OsStr| (name == "failed").then(|| "release end: exit status 1".to_owned());
        let kept = root.finish(Driver::Qemu, "vm".as_ref(), &why).unwrap();
        assert_eq!(kept, vec![failed.clone()]);
        assert!(!ok.exists() && failed.exists() && other_vm.exists());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep me");
        let entries = root.entries(Driver::Qemu);
        let kept_entry = entries.iter().find(|e| e.object == "vm").unwrap();
        assert_eq!(kept_entry.kept.as_deref(), Some("release end: exit status 1"));
        assert!(entries.iter().any(|e| e.object == "other" && e.kept.is_none()));
        // The next lifecycle's last event succeeds: the directory and its note go.
        let kept = root.finish(Driver::Qemu, "vm".as_ref(), &|_| None).unwrap();
        assert!(kept.is_empty());
        assert!(!root.path().join("qemu/vm").exists());
        assert!(!root.path().join(".kept/qemu/vm").exists());
        assert_eq!(root.entries(Driver::Qemu).len(), 1);
    }

    /// Makes `levels` directories named `name`, each in the last, below `dir`, through
    /// descriptors (the path soon passes `PATH_MAX`), and returns the deepest.
    fn chain(dir: &Path, name: &str, levels: usize) -> rustix::fd::OwnedFd {
        use rustix::fs::{mkdirat, openat, Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = open_dir(dir);
        for _ in 0..levels {
            mkdirat(&fd, name, Mode::from_raw_mode(0o700)).unwrap();
            fd = openat(&fd, name, flags, Mode::empty()).unwrap();
        }
        fd
    }

    fn open_dir(dir: &Path) -> rustix::fd::OwnedFd {
        use rustix::fs::{open, Mode, OFlags};
        open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    fn file_at(dir: &rustix::fd::OwnedFd, name: &str) {
        use rustix::fs::{openat, Mode, OFlags};
        openat(
            dir,
            name,
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
    }

    /// A hook's tree past `PATH_MAX` (40 levels of 200-byte names: 8 KB of path), beside
    /// a wide one (many directories per level, so a level is read on after each visit
    /// below it), with files and a link out at the bottom.
    fn deep_and_wide(dir: &Path, outside: &Path) {
        let bottom = chain(dir, &"d".repeat(200), 40);
        file_at(&bottom, "f");
        rustix::fs::symlinkat(outside, &bottom, "out").unwrap();
        for i in 0..30 {
            let branch = chain(dir, &format!("w{i}"), 1);
            for j in 0..5 {
                file_at(&chain(&dir.join(format!("w{i}")), &format!("x{j}"), 2), "f");
            }
            file_at(&branch, "f");
        }
    }

    #[test]
    fn a_tree_deeper_than_path_max_goes_at_the_last_event() {
        let (tmp, root) = root();
        let dir = root.open(Driver::Qemu, "vm".as_ref(), "10-deep.wasm".as_ref()).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "keep me").unwrap();
        deep_and_wide(&dir, &outside);
        let kept = root.finish(Driver::Qemu, "vm".as_ref(), &|_| None);
        assert!(kept.as_ref().is_ok_and(Vec::is_empty), "{kept:?}");
        assert!(!root.path().join("qemu/vm").exists(), "the tree outlived its object");
        assert!(!root.path().join(".kept/qemu/vm").exists());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep me");
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A tmpfs mounted at `<at>/<name>` (`at` open: the path may pass `PATH_MAX`),
    /// holding `media.iso`; unmounted when dropped.
    struct Mounted(rustix::fd::OwnedFd, &'static str);

    impl Mounted {
        fn new(at: rustix::fd::OwnedFd, name: &'static str) -> Option<Self> {
            use std::os::fd::AsRawFd;
            let _ = rustix::fs::mkdirat(&at, name, rustix::fs::Mode::from_raw_mode(0o700));
            let target = format!("/proc/self/fd/{}/{name}", at.as_raw_fd());
            let flags = rustix::mount::MountFlags::empty();
            if let Err(e) = rustix::mount::mount("none", target.as_str(), "tmpfs", flags, None) {
                eprintln!("SKIPPED: cannot mount a tmpfs here: {e}");
                return None;
            }
            let mounted = Mounted(at, name);
            fs::write(mounted.path().join("media.iso"), "not to be deleted").unwrap();
            Some(mounted)
        }

        fn path(&self) -> PathBuf {
            use std::os::fd::AsRawFd;
            PathBuf::from(format!("/proc/self/fd/{}/{}", self.0.as_raw_fd(), self.1))
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(self.path(), rustix::mount::UnmountFlags::DETACH);
        }
    }

    #[test]
    fn a_mount_point_deep_in_a_tree_keeps_the_directory_and_the_note_says_why_first() {
        if !is_root() {
            eprintln!("SKIPPED: mounting needs root");
            return;
        }
        let (tmp, root) = root();
        let dir = root.open(Driver::Qemu, "vm".as_ref(), "10-media".as_ref()).unwrap();
        deep_and_wide(&dir, &tmp.path().join("outside"));
        // A file system mounted at the bottom of a chain past PATH_MAX, under a wide level.
        let bottom = chain(&dir.join("w17"), &"m".repeat(200), 40);
        let Some(mounted) = Mounted::new(bottom, "media") else {
            return;
        };
        let err = root.finish(Driver::Qemu, "vm".as_ref(), &|_| None).unwrap_err();
        let StateError::HoldsMount { path, mount } = &err else {
            panic!("not kept for its mount point: {err}")
        };
        assert_eq!(path, &dir);
        assert!(
            mount.starts_with(dir.join("w17")) && mount.ends_with("media"),
            "{}",
            err
        );
        assert_eq!(
            fs::read_to_string(mounted.path().join("media.iso")).unwrap(),
            "not to be deleted"
        );
        assert!(
            dir.join("w3/x0/x0/f").exists(),
            "nothing of a kept directory is removed"
        );
        // The note names the cause first, whatever the length of the path.
        let note = root.entries(Driver::Qemu)[0].kept.clone().unwrap();
        assert!(note.starts_with("holds a mount point"), "{note:.300}");
        drop(mounted);
        assert!(root.finish(Driver::Qemu, "vm".as_ref(), &|_| None).unwrap().is_empty());
        assert!(!root.path().join("qemu/vm").exists());
    }

    #[test]
    fn a_hook_directory_that_is_a_mount_point_is_kept_not_emptied() {
        if !is_root() {
            eprintln!("SKIPPED: mounting needs root");
            return;
        }
        let (_tmp, root) = root();
        let dir = root.open(Driver::Qemu, "vm".as_ref(), "10-media".as_ref()).unwrap();
        let object = open_dir(dir.parent().unwrap());
        fs::remove_dir(&dir).unwrap();
        let Some(mounted) = Mounted::new(object, "10-media") else {
            return;
        };
        let finished = root.finish(Driver::Qemu, "vm".as_ref(), &|_| None);
        assert_eq!(
            fs::read_to_string(mounted.path().join("media.iso")).ok().as_deref(),
            Some("not to be deleted"),
            "the mounted file system was emptied ({finished:?})"
        );
        assert!(matches!(finished, Err(StateError::HoldsMount { .. })), "{finished:?}");
    }

    #[test]
    fn remove_takes_one_hooks_directory_and_its_note_and_never_follows_a_link() {
        let (tmp, root) = root();
        let a = root.open(Driver::Qemu, "vm".as_ref(), "a".as_ref()).unwrap();
        let b = root.open(Driver::Qemu, "vm".as_ref(), "b".as_ref()).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "keep me").unwrap();
        symlink(&outside, a.join("link")).unwrap();
        root.finish(Driver::Qemu, "vm".as_ref(), &|_| Some("release end failed".into()))
            .unwrap();
        assert!(root.remove(Driver::Qemu, "vm".as_ref(), "a".as_ref()).unwrap());
        assert!(!a.exists() && b.exists());
        assert!(!root.path().join(".kept/qemu/vm/a").exists());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep me");
        assert!(
            !root.remove(Driver::Qemu, "vm".as_ref(), "a".as_ref()).unwrap(),
            "nothing left"
        );
        assert!(root.remove(Driver::Qemu, "..".as_ref(), "b".as_ref()).is_err());
        assert!(root.remove(Driver::Qemu, "vm".as_ref(), "b".as_ref()).unwrap());
        assert!(!root.path().join("qemu/vm").exists(), "the empty object level goes");
        // An object level swapped for a link to someone else's directory: nothing there goes.
        let victim = tmp.path().join("victim");
        fs::create_dir_all(victim.join("h")).unwrap();
        symlink(&victim, root.path().join("qemu/other")).unwrap();
        let err = root.remove(Driver::Qemu, "other".as_ref(), "h".as_ref()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(victim.join("h").exists());
    }

    #[test]
    fn finishing_an_object_without_state_does_nothing() {
        let (_tmp, root) = root();
        assert!(root.finish(Driver::Qemu, "vm".as_ref(), &|_| None).unwrap().is_empty());
        assert!(root.finish(Driver::Qemu, "..".as_ref(), &|_| None).unwrap().is_empty());
        assert!(!root.path().exists());
    }
}
