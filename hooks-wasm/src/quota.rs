//! The cap on a call's `/state`, enforced at the WASI calls that could pass it.
//!
//! WASI has no quota, and a cap checked between host calls is no cap: one `fd_write`
//! of 32 MiB passes any sample. So the calls that add bytes or entries (`fd_write`,
//! `fd_pwrite`, `fd_filestat_set_size`, `path_open` with `O_CREAT`,
//! `path_create_directory`, `path_symlink`, `path_link`) are shadowed in the linker: each
//! asks [`StateQuota::admit`] first, and one that would pass the cap returns `dquot`
//! ("disk quota exceeded") to the module without touching the directory.
//!
//! Usage is kept as an upper bound (a fresh measure at the start of the call, plus what
//! each admitted call may add), so the common call costs no I/O; only when the bound
//! would pass the cap is the directory measured again, exactly, before refusing.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags};
use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::types::{Errno, Fd, Fdflags, Filetype, Lookupflags, Oflags};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as wasi, WasiSnapshotPreview1 as _};
use wasmtime_wasi::p1::WasiP1Ctx;
use wiggle::{GuestMemory, GuestPtr};

use crate::sandbox::HostState;

/// Most files, directories and links a state directory may hold: each costs the host
/// memory (tmpfs) and is walked when the directory is measured. Also bounds a tree's
/// depth, which the fd-relative walk and `remove_dir_all` handle at any depth.
pub(crate) const MAX_STATE_ENTRIES: u64 = 1000;

/// Growth is counted in whole pages: a write that extends a file can allocate up to a
/// page more than it wrote.
const PAGE: u64 = 4096;

/// What a state directory holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
}

/// One call's view of its state directory and its cap.
#[derive(Debug)]
pub(crate) struct StateQuota {
    dir: PathBuf,
    /// The directory, opened and `flock`ed for the call: calls of the same plugin for
    /// the same object run one at a time, so each one's bound is the whole truth.
    handle: OwnedFd,
    max: u64,
    /// Never less than what the directory holds.
    bound: Usage,
    /// Whether `bound` is what the last measure found, and nothing since could have
    /// freed anything: a refusal then needs no new walk (a module retrying a refused
    /// call would otherwise make the host walk the whole tree each time).
    exact: bool,
    /// The module's descriptors opened by `path_open` (renumbered and closed as it
    /// does): files it unlinked while holding them open are counted through these.
    opened: BTreeSet<u32>,
    /// The first refusal, for the report.
    refused: Option<String>,
}

/// How often a call waiting for another call's hold on the same state directory looks
/// again.
const LOCK_POLL: Duration = Duration::from_millis(10);

impl StateQuota {
    /// Opens and locks `dir` (waiting for another call of the same plugin for the same
    /// object until `deadline`), and measures it as the call starts.
    pub(crate) fn new(dir: &Path, max: u64, deadline: Option<Instant>) -> Result<Self, String> {
        let handle = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("its state directory `{}` cannot be opened: {e}", dir.display()))?;
        loop {
            match rustix::fs::flock(&handle, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if deadline.is_none_or(|d| Instant::now() < d) => {
                    std::thread::sleep(LOCK_POLL);
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(format!(
                        "its state directory `{}` was held by another call of it for the same object until its timeout",
                        dir.display()
                    ))
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(format!("its state directory `{}` cannot be locked: {e}", dir.display())),
            }
        }
        let bound = measure_at(&handle)
            .map_err(|e| format!("its state directory `{}` cannot be measured: {e}", dir.display()))?;
        Ok(StateQuota {
            dir: dir.to_owned(),
            handle,
            max,
            bound,
            exact: true,
            opened: BTreeSet::new(),
            refused: None,
        })
    }

    /// Whether `bytes` more and `entries` more fit under the bound; if so they are
    /// counted at once.
    fn admit_within_bound(&mut self, bytes: u64, entries: u64) -> bool {
        if !self.fits(self.bound, bytes, entries) {
            return false;
        }
        self.bound.bytes += bytes;
        self.bound.entries += entries;
        self.exact &= bytes == 0 && entries == 0;
        true
    }

    /// Whether `bytes` more and `entries` more may be added, measuring the directory
    /// first unless the bound is exact; `unlinked` is what the module's open but
    /// unlinked files hold (`None` when the bound is exact).
    fn admit_measured(&mut self, bytes: u64, entries: u64, unlinked: Option<u64>) -> Result<(), Errno> {
        let measured = match unlinked {
            None if self.exact => Ok(self.bound),
            unlinked => measure_at(&self.handle).map(|mut usage| {
                usage.bytes = usage.bytes.saturating_add(unlinked.unwrap_or(0));
                usage
            }),
        };
        match measured {
            Ok(now) if self.fits(now, bytes, entries) => {
                self.bound = Usage {
                    bytes: now.bytes + bytes,
                    entries: now.entries + entries,
                };
                self.exact = false;
                Ok(())
            }
            Ok(now) => {
                self.bound = now;
                self.exact = true;
                if self.refused.is_none() {
                    self.refused = Some(self.refusal(now, bytes, entries));
                }
                Err(Errno::Dquot)
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "state directory cannot be measured; refusing growth");
                Err(Errno::Io)
            }
        }
    }

    fn fits(&self, usage: Usage, bytes: u64, entries: u64) -> bool {
        let room = if entries > 0 { CREATE_ROOM } else { 0 };
        usage
            .bytes
            .checked_add(bytes)
            .and_then(|b| b.checked_add(room))
            .is_some_and(|b| b <= self.max)
            && usage.entries.saturating_add(entries) <= MAX_STATE_ENTRIES
    }

    fn refusal(&self, now: Usage, bytes: u64, entries: u64) -> String {
        if entries > 0 && now.entries.saturating_add(entries) > MAX_STATE_ENTRIES {
            format!(
                "its state directory `{}` already holds {MAX_STATE_ENTRIES} files and directories, the most allowed",
                self.dir.display()
            )
        } else {
            format!(
                "{bytes} more bytes in its state directory `{}` were refused: it holds {} of its state_max of {} bytes",
                self.dir.display(),
                now.bytes,
                self.max
            )
        }
    }

    /// Something may have been removed or shrunk: the next refusal measures again.
    fn may_have_freed(&mut self) {
        self.exact = false;
    }

    /// The first growth refused during the call, if any.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Why the directory is over its cap now, if it is: it may have been over before
    /// the call (a lowered `state_max`), or grown by what the WASI layer cannot see.
    pub(crate) fn over(&self) -> Option<String> {
        match measure_at(&self.handle) {
            Ok(Usage { bytes, .. }) if bytes > self.max => Some(format!(
                "its state directory `{}` holds more than its state_max of {} bytes ({bytes} counted)",
                self.dir.display(),
                self.max
            )),
            Ok(Usage { entries, .. }) if entries > MAX_STATE_ENTRIES => Some(format!(
                "its state directory `{}` holds more than {MAX_STATE_ENTRIES} files and directories",
                self.dir.display()
            )),
            Ok(_) => None,
            Err(e) => Some(format!(
                "its state directory `{}` cannot be measured: {e}",
                self.dir.display()
            )),
        }
    }
}

/// What `dir` holds: see [`measure_at`].
#[cfg(test)]
pub(crate) fn measure(dir: &Path) -> io::Result<Usage> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    measure_at(&root)
}

/// What the directory `root` holds: each entry at the larger of its length and its
/// allocated blocks (a sparse file counts at its length), links not followed. Walked
/// through directory descriptors, so no path grows with the tree's depth. Files the
/// module unlinked while holding them open are not in the tree: the caller adds them.
pub(crate) fn measure_at(root: &OwnedFd) -> io::Result<Usage> {
    let mut usage = Usage::default();
    // Each pending directory is opened relative to its parent, which its `Arc` keeps
    // open only while children are left to visit.
    let mut pending: Vec<(Arc<OwnedFd>, std::ffi::CString)> = Vec::new();
    let visit = |dirfd: Arc<OwnedFd>, usage: &mut Usage, pending: &mut Vec<_>| -> io::Result<()> {
        let mut entries = rustix::fs::Dir::read_from(dirfd.as_fd())?;
        for entry in entries.by_ref() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let stat = match rustix::fs::statat(dirfd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Removed meanwhile: it holds nothing.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            usage.entries += 1;
            let blocks = u64::try_from(stat.st_blocks).unwrap_or(0).saturating_mul(512);
            let len = u64::try_from(stat.st_size).unwrap_or(0);
            usage.bytes = usage.bytes.saturating_add(len.max(blocks));
            if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory {
                pending.push((Arc::clone(&dirfd), name.to_owned()));
            }
        }
        Ok(())
    };
    // The root's own size grows with its entries too (ext4 adds blocks, tmpfs bytes
    // per name); its first page is free, as an empty directory's.
    let stat = rustix::fs::fstat(root)?;
    let own = u64::try_from(stat.st_size)
        .unwrap_or(0)
        .max(u64::try_from(stat.st_blocks).unwrap_or(0).saturating_mul(512));
    usage.bytes = own.saturating_sub(PAGE);
    visit(Arc::new(rustix::io::dup(root)?), &mut usage, &mut pending)?;
    while let Some((parent, name)) = pending.pop() {
        let child = open_dir_at(&parent, &name)?;
        drop(parent);
        visit(Arc::new(child), &mut usage, &mut pending)?;
    }
    Ok(usage)
}

fn open_dir_at(parent: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent.as_fd(),
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `end` rounded up to a page, less `size` rounded up: what extending a file from
/// `size` to `end` bytes may allocate.
fn growth(size: u64, end: u64) -> u64 {
    let pages = |n: u64| n.div_ceil(PAGE).saturating_mul(PAGE);
    if end <= size {
        0
    } else {
        pages(end).saturating_sub(pages(size)).max(end - size)
    }
}

/// The length of the first non-empty buffer of an iovec array: the one WASI's
/// `fd_write`/`fd_pwrite` write (they write one buffer per call). `None` when the array
/// is out of bounds (WASI then fails the call itself).
fn first_buffer_len(memory: &[u8], iovs: u32, count: u32) -> Option<u64> {
    let start = usize::try_from(iovs).ok()?;
    let bytes = usize::try_from(count).ok()?.checked_mul(8)?;
    let array = memory.get(start..start.checked_add(bytes)?)?;
    let len = array
        .chunks_exact(8)
        .map(|iov| u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]))
        .find(|&len| len > 0)
        .unwrap_or(0);
    Some(len.into())
}

/// The little-endian `u32` at `at` in the module's memory, if in bounds.
fn read_u32(memory: &[u8], at: i32) -> Option<u32> {
    let at = usize::try_from(at as u32).ok()?;
    let bytes = memory.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn unshared<'a>(mem: &'a GuestMemory<'_>) -> &'a [u8] {
    match mem {
        GuestMemory::Unshared(data) => data,
        // The engine has no threads: a shared memory cannot be created.
        GuestMemory::Shared(_) => &[],
    }
}

/// Where a write lands.
#[derive(Clone, Copy)]
enum At {
    Cursor,
    Offset(u64),
}

type HostFuture<'a> = Box<dyn Future<Output = wasmtime::Result<i32>> + Send + 'a>;

/// The module's memory and the host state, as WASI's own functions take them, with
/// the call's host-call fuel handed on (WASI bounds the arrays it copies with it).
macro_rules! wasi_parts {
    ($caller:ident, $mem:ident, $host:ident) => {
        let fuel = $caller.as_context_mut().hostcall_fuel();
        let Some(Extern::Memory(memory)) = $caller.get_export("memory") else {
            wasmtime::bail!("missing required memory export");
        };
        let (data, $host) = memory.data_and_store_mut(&mut $caller);
        let $host: &mut HostState = $host;
        $host.wasi.set_hostcall_fuel(fuel);
        let mut $mem = GuestMemory::Unshared(data);
    };
}

/// Bytes a write to `fd` may add, if `fd` is a regular file (every file a module can
/// open is in `/state`; stdout and stderr have caps of their own).
async fn write_growth(host: &mut HostState, mem: &mut GuestMemory<'_>, fd: i32, len: u64, at: At) -> Option<u64> {
    let fd = Fd::from(fd);
    let stat = host.wasi.fd_fdstat_get(mem, fd).await.ok()?;
    if stat.fs_filetype != Filetype::RegularFile || len == 0 {
        return None;
    }
    let size = host.wasi.fd_filestat_get(mem, fd).await.ok()?.size;
    let start = if stat.fs_flags.contains(Fdflags::APPEND) {
        size
    } else {
        match at {
            At::Offset(offset) => offset,
            At::Cursor => host.wasi.fd_tell(mem, fd).ok()?,
        }
    };
    Some(growth(size, start.saturating_add(len)))
}

/// `None` when `bytes` more and `entries` more may go into the state directory (or the
/// call has none), else the errno to return.
async fn refuse(host: &mut HostState, mem: &mut GuestMemory<'_>, bytes: u64, entries: u64) -> Option<i32> {
    let HostState { wasi, state, .. } = host;
    let quota = state.as_mut()?;
    if quota.admit_within_bound(bytes, entries) {
        return None;
    }
    let unlinked = if quota.exact {
        None
    } else {
        Some(unlinked_bytes(wasi, mem, &quota.opened).await)
    };
    quota
        .admit_measured(bytes, entries, unlinked)
        .err()
        .map(|errno| errno as i32)
}

/// What the module's open files that are no longer in any directory hold: the walk
/// cannot see them, and a module writing through one would otherwise have no cap.
/// Asked of WASI itself (the module's own descriptors), never of paths.
async fn unlinked_bytes(wasi: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>, opened: &BTreeSet<u32>) -> u64 {
    let mut seen = BTreeSet::new();
    let mut bytes = 0u64;
    for &fd in opened {
        let Ok(stat) = wasi.fd_filestat_get(mem, Fd::from(fd)).await else {
            continue;
        };
        if stat.filetype == Filetype::RegularFile && stat.nlink == 0 && seen.insert((stat.dev, stat.ino)) {
            bytes = bytes.saturating_add(stat.size);
        }
    }
    bytes
}

/// What a new entry named by `path_len` bytes may add to its directory: twice its
/// name and bookkeeping (an ext4 entry is 8 bytes and the name, 4-aligned, and blocks
/// split half full).
fn entry_cost(path_len: i32) -> u64 {
    u64::from(path_len as u32).saturating_add(16).saturating_mul(2)
}

/// Room a create must leave under the cap, not charged: one entry can grow its
/// directory by whole blocks at once (ext4 turns a one-block directory into an indexed
/// one of three).
const CREATE_ROOM: u64 = 2 * PAGE;

/// Shadows the WASI calls that add to the state directory with ones that ask the
/// quota first. Calls of a store without state go straight to WASI.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const MODULE: &str = "wasi_snapshot_preview1";
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, HostState>, (fd, iovs, count, nwritten): (i32, i32, i32, i32)| -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                if host.state.is_some() {
                    // An array past the end of memory: WASI would still write its first
                    // buffers (it reads the array lazily), so the call is refused here.
                    let Some(len) = first_buffer_len(unshared(&mem), iovs as u32, count as u32) else {
                        return Ok(Errno::Fault as i32);
                    };
                    if let Some(bytes) = write_growth(host, &mut mem, fd, len, At::Cursor).await {
                        if let Some(errno) = refuse(host, &mut mem, bytes, 0).await {
                            return Ok(errno);
                        }
                    }
                }
                wasi::fd_write(&mut host.wasi, &mut mem, fd, iovs, count, nwritten).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_pwrite",
        |mut caller: Caller<'_, HostState>,
         (fd, iovs, count, offset, nwritten): (i32, i32, i32, i64, i32)|
         -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                if host.state.is_some() {
                    let Some(len) = first_buffer_len(unshared(&mem), iovs as u32, count as u32) else {
                        return Ok(Errno::Fault as i32);
                    };
                    let at = At::Offset(offset as u64);
                    if let Some(bytes) = write_growth(host, &mut mem, fd, len, at).await {
                        if let Some(errno) = refuse(host, &mut mem, bytes, 0).await {
                            return Ok(errno);
                        }
                    }
                }
                wasi::fd_pwrite(&mut host.wasi, &mut mem, fd, iovs, count, offset, nwritten).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_filestat_set_size",
        |mut caller: Caller<'_, HostState>, (fd, size): (i32, i64)| -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                if host.state.is_some() {
                    let current = host.wasi.fd_filestat_get(&mut mem, Fd::from(fd)).await.map(|s| s.size);
                    if let Ok(current) = current {
                        if let Some(errno) = refuse(host, &mut mem, growth(current, size as u64), 0).await {
                            return Ok(errno);
                        }
                    }
                    if (size as u64) < current.unwrap_or(u64::MAX) {
                        freed(host);
                    }
                }
                wasi::fd_filestat_set_size(&mut host.wasi, &mut mem, fd, size).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_open",
        |mut caller: Caller<'_, HostState>,
         (dirfd, dirflags, path, path_len, oflags, base, inheriting, fdflags, opened): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i64,
            i64,
            i32,
            i32,
        )|
         -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                let creates = (oflags as u16) & Oflags::CREAT.bits() != 0;
                if (oflags as u16) & Oflags::TRUNC.bits() != 0 {
                    freed(host);
                }
                if creates && host.state.is_some() {
                    // Opening a file that is there already adds nothing.
                    let name = GuestPtr::<str>::new((path as u32, path_len as u32));
                    let fd = Fd::from(dirfd);
                    let flags = Lookupflags::from_bits_truncate(dirflags as u32);
                    let exists = host.wasi.path_filestat_get(&mut mem, fd, flags, name).await.is_ok();
                    if !exists {
                        if let Some(errno) = refuse(host, &mut mem, entry_cost(path_len), 1).await {
                            return Ok(errno);
                        }
                    }
                }
                let errno = wasi::path_open(
                    &mut host.wasi,
                    &mut mem,
                    dirfd,
                    dirflags,
                    path,
                    path_len,
                    oflags,
                    base,
                    inheriting,
                    fdflags,
                    opened,
                )
                .await?;
                if errno == 0 {
                    if let (Some(quota), Some(fd)) = (host.state.as_mut(), read_u32(unshared(&mem), opened)) {
                        quota.opened.insert(fd);
                    }
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_create_directory",
        |mut caller: Caller<'_, HostState>, (fd, path, path_len): (i32, i32, i32)| -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                // A directory's own size is counted (ext4 gives each a block).
                if let Some(errno) = refuse(host, &mut mem, PAGE + entry_cost(path_len), 1).await {
                    return Ok(errno);
                }
                wasi::path_create_directory(&mut host.wasi, &mut mem, fd, path, path_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_symlink",
        |mut caller: Caller<'_, HostState>,
         (old, old_len, fd, new, new_len): (i32, i32, i32, i32, i32)|
         -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                // The target is stored in the link.
                if let Some(errno) = refuse(
                    host,
                    &mut mem,
                    growth(0, old_len as u32 as u64) + entry_cost(new_len),
                    1,
                )
                .await
                {
                    return Ok(errno);
                }
                wasi::path_symlink(&mut host.wasi, &mut mem, old, old_len, fd, new, new_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_link",
        |mut caller: Caller<'_, HostState>,
         (old_fd, old_flags, old, old_len, new_fd, new, new_len): (i32, i32, i32, i32, i32, i32, i32)|
         -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                // The measure counts each name of a file at the file's size.
                if host.state.is_some() {
                    let name = GuestPtr::<str>::new((old as u32, old_len as u32));
                    let fd = Fd::from(old_fd);
                    let flags = Lookupflags::from_bits_truncate(old_flags as u32);
                    let size = host
                        .wasi
                        .path_filestat_get(&mut mem, fd, flags, name)
                        .await
                        .map_or(0, |s| s.size);
                    if let Some(errno) = refuse(host, &mut mem, growth(0, size) + entry_cost(new_len), 1).await {
                        return Ok(errno);
                    }
                }
                wasi::path_link(
                    &mut host.wasi,
                    &mut mem,
                    old_fd,
                    old_flags,
                    old,
                    old_len,
                    new_fd,
                    new,
                    new_len,
                )
                .await
            })
        },
    )?;
    // Calls that can only free space: the next refusal must measure again.
    linker.func_wrap_async(
        MODULE,
        "path_unlink_file",
        |mut caller: Caller<'_, HostState>, (fd, path, path_len): (i32, i32, i32)| -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                freed(host);
                wasi::path_unlink_file(&mut host.wasi, &mut mem, fd, path, path_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_remove_directory",
        |mut caller: Caller<'_, HostState>, (fd, path, path_len): (i32, i32, i32)| -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                freed(host);
                wasi::path_remove_directory(&mut host.wasi, &mut mem, fd, path, path_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_rename",
        |mut caller: Caller<'_, HostState>,
         (fd, old, old_len, new_fd, new, new_len): (i32, i32, i32, i32, i32, i32)|
         -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                freed(host);
                wasi::path_rename(&mut host.wasi, &mut mem, fd, old, old_len, new_fd, new, new_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_close",
        |mut caller: Caller<'_, HostState>, (fd,): (i32,)| -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                freed(host);
                let errno = wasi::fd_close(&mut host.wasi, &mut mem, fd).await?;
                if errno == 0 {
                    if let Some(quota) = host.state.as_mut() {
                        quota.opened.remove(&(fd as u32));
                    }
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_renumber",
        |mut caller: Caller<'_, HostState>, (from, to): (i32, i32)| -> HostFuture<'_> {
            Box::new(async move {
                wasi_parts!(caller, mem, host);
                // `to` is closed: what it held may be freed.
                freed(host);
                let errno = wasi::fd_renumber(&mut host.wasi, &mut mem, from, to).await?;
                // Onto itself: WASI does nothing, and so must the bookkeeping (removing
                // `to` would forget the file, and its bytes once it is unlinked).
                if errno == 0 && from != to {
                    if let Some(quota) = host.state.as_mut() {
                        quota.opened.remove(&(to as u32));
                        if quota.opened.remove(&(from as u32)) {
                            quota.opened.insert(to as u32);
                        }
                    }
                }
                Ok(errno)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn freed(host: &mut HostState) {
    if let Some(quota) = host.state.as_mut() {
        quota.may_have_freed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn growth_counts_whole_pages_and_nothing_for_overwrites() {
        assert_eq!(growth(0, 1), PAGE);
        assert_eq!(growth(10, 20), 10);
        assert_eq!(growth(4096, 4096), 0);
        assert_eq!(growth(100, 50), 0);
        assert_eq!(growth(0, 3 * PAGE + 1), 4 * PAGE);
        assert_eq!(growth(u64::MAX - 1, u64::MAX), 1);
    }

    #[test]
    fn the_first_non_empty_buffer_is_the_one_written() {
        let mut memory = vec![0u8; 64];
        memory[8..16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        memory[16..24].copy_from_slice(&[0, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(first_buffer_len(&memory, 8, 2), Some(7));
        assert_eq!(first_buffer_len(&memory, 8, 1), Some(0));
        assert_eq!(first_buffer_len(&memory, 60, 1), None);
        assert_eq!(first_buffer_len(&memory, u32::MAX, u32::MAX), None);
    }

    #[test]
    fn a_tree_deeper_than_path_max_is_measured() {
        let tmp = tempfile::tempdir().unwrap();
        // 40 levels of 200-byte names: 8 KB of path, twice PATH_MAX.
        let name = "d".repeat(200);
        let mut fd = rustix::fs::open(tmp.path(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        for _ in 0..40 {
            rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o700)).unwrap();
            fd = rustix::fs::openat(&fd, name.as_str(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        }
        rustix::fs::openat(&fd, "f", OFlags::CREATE | OFlags::WRONLY, Mode::from_raw_mode(0o600)).unwrap();
        let usage = measure(tmp.path()).unwrap();
        assert_eq!(usage.entries, 41);
        // And std's removal copes with it too (what the state root uses).
        fs::remove_dir_all(tmp.path().join(&name)).unwrap();
        assert_eq!(measure(tmp.path()).unwrap(), Usage::default());
    }

    #[test]
    fn a_refusal_is_measured_first_and_explained() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a"), vec![1u8; 8192]).unwrap();
        let mut quota = StateQuota::new(tmp.path(), 16384, None).unwrap();
        let admit = |quota: &mut StateQuota, bytes| {
            if quota.admit_within_bound(bytes, 0) {
                Ok(())
            } else {
                let unlinked = (!quota.exact).then_some(0);
                quota.admit_measured(bytes, 0, unlinked)
            }
        };
        assert!(admit(&mut quota, 8192).is_ok());
        // The bound is now 16384: the next write is measured, and since `a` went, fits.
        fs::remove_file(tmp.path().join("a")).unwrap();
        assert!(admit(&mut quota, 12288).is_ok());
        assert_eq!(admit(&mut quota, 1 << 20), Err(Errno::Dquot));
        let why = quota.refused().unwrap();
        assert!(why.contains("state_max of 16384 bytes"), "{why}");
    }

    #[test]
    fn a_second_call_waits_for_the_first_and_gives_up_at_its_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StateQuota::new(tmp.path(), 1 << 20, None).unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        let why = StateQuota::new(tmp.path(), 1 << 20, Some(deadline)).unwrap_err();
        assert!(why.contains("held by another call"), "{why}");
        drop(first);
        assert!(StateQuota::new(tmp.path(), 1 << 20, Some(Instant::now())).is_ok());
    }
}
