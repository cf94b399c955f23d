//! The on-disk cache of compiled modules, and what makes running its entries safe.
//!
//! Loading an entry maps native code that then runs with this process's privileges
//! (root, under libvirt), and wasmtime checks little of it: its header, version and
//! engine settings, not the code. An entry is therefore as powerful as a native
//! plugin, and is used only when all of these hold:
//!
//! - the cache dir is an absolute path without `.` or `..` components, and passes the
//!   trust rule for the effective uid ([`TrustPolicy::check_dir`]: it and every
//!   directory above it are owned by root or the effective uid and not writable by
//!   group or others), checked when the sandbox is built and again before every read;
//!   a dir that fails is not used at all (and nothing is created for it below an
//!   untrusted directory);
//! - the entry, opened with `O_NOFOLLOW` (a symlink is refused) and examined with
//!   `fstat` on the open file, is a regular file owned by the effective uid and not
//!   writable by group or others;
//! - it is at most [`MAX_ENTRY`] bytes (`fstat`), its header (read first, alone) names
//!   the SHA-256 of the module bytes being loaded and this engine's compatibility hash,
//!   and its checksum (over header and code) matches: an entry copied over another
//!   module's name, written by another engine, or torn is never deserialized.
//!
//! Anything else is recompiled and the entry rewritten. The checksum proves nothing
//! about who wrote an entry (anyone could compute it); only the first two rules do.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use virt_hooks_core::backend::TrustPolicy;
use wasmtime::{Engine, Module};

/// The system cache root uses, whatever its environment says.
const SYSTEM_DIR: &str = "/var/cache/virt-hooks/wasm";

/// Entry layout: magic, module SHA-256, engine hash, checksum of all before it and the
/// code, then wasmtime's serialized module.
const MAGIC: &[u8; 8] = b"VHWASM2\0";
const HEADER_LEN: usize = MAGIC.len() + 3 * 32;

/// The largest entry read (or written): far above any hook's compiled code, and a
/// bound on what a bad entry can make the host read (a 1 GiB sparse one was read
/// whole, and hashed, before being refused).
const MAX_ENTRY: u64 = 256 << 20;

/// The default on-disk cache dir for this process: [`cache_dir_for`] with the
/// effective uid and the process environment.
pub fn default_cache_dir() -> Option<PathBuf> {
    cache_dir_for(TrustPolicy::current_user().uid(), |name| std::env::var_os(name))
}

/// The cache dir for a process running with effective uid `euid` and environment
/// `env`: `$VIRT_HOOKS_WASM_CACHE` if set (`off` disables the cache); else, for root,
/// always `/var/cache/virt-hooks/wasm` (`HOME` and `XDG_CACHE_HOME` are not consulted:
/// under `sudo -E` they name a user's directory); else `$XDG_CACHE_HOME/virt-hooks/wasm`,
/// else `$HOME/.cache/virt-hooks/wasm`, else none.
///
/// Whatever it returns must still be an absolute path without `.` or `..` components
/// and pass the trust rule when a [`crate::Sandbox`] opens it, or the sandbox runs
/// without a disk cache.
///
/// ```
/// use std::path::PathBuf;
/// use virt_hooks_wasm::cache_dir_for;
/// let env = |name: &str| (name == "HOME").then(|| "/home/dev".into());
/// assert_eq!(cache_dir_for(1000, env), Some(PathBuf::from("/home/dev/.cache/virt-hooks/wasm")));
/// assert_eq!(cache_dir_for(0, env), Some(PathBuf::from("/var/cache/virt-hooks/wasm")));
/// ```
pub fn cache_dir_for(euid: u32, env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    match var("VIRT_HOOKS_WASM_CACHE") {
        Some(v) if v == "off" => return None,
        Some(v) => return Some(PathBuf::from(v)),
        None => {}
    }
    if euid == 0 {
        return Some(PathBuf::from(SYSTEM_DIR));
    }
    // The XDG spec says to ignore a relative value.
    let absolute = |v: OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(xdg) = var("XDG_CACHE_HOME").and_then(absolute) {
        return Some(xdg.join("virt-hooks/wasm"));
    }
    var("HOME")
        .and_then(absolute)
        .map(|home| home.join(".cache/virt-hooks/wasm"))
}

/// How often a process waiting for another's compile of the same module looks again.
const LOCK_POLL: Duration = Duration::from_millis(10);

/// The most bytes of a recorded compile failure read.
const MAX_FAILURE: u64 = 4 << 10;

/// Held while this process compiles one module for one engine: others wait for it,
/// then load what it stored. Released when dropped (the descriptor closes).
#[derive(Debug)]
pub(crate) struct CompileLock {
    _file: fs::File,
}

/// The limits a compile ran under, as recorded with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompileLimits {
    /// `None`: no time limit.
    pub(crate) timeout: Option<Duration>,
    /// `None`: compiled in this process, with no memory limit.
    pub(crate) memory: Option<u64>,
}

impl CompileLimits {
    /// Whether a compile that failed under `self` would fail under `other` too: `other`
    /// gives no more time and no more memory.
    pub(crate) fn covers(self, other: CompileLimits) -> bool {
        // A recorded time is what the compile had left after waiting for the lock, cut
        // to milliseconds: a load with the same budget must match it.
        let time = match (self.timeout, other.timeout) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b <= a + (a / 20).max(Duration::from_millis(100)),
        };
        let memory = match (self.memory, other.memory) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b <= a,
        };
        time && memory
    }

    fn render(self) -> String {
        let num = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        format!(
            "timeout_ms={} memory={}",
            num(self.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            num(self.memory)
        )
    }

    fn parse(line: &str) -> Option<CompileLimits> {
        let num = |v: &str| -> Option<Option<u64>> {
            match v {
                "none" => Some(None),
                v => v.parse().ok().map(Some),
            }
        };
        let (timeout, memory) = line.split_once(' ')?;
        Some(CompileLimits {
            timeout: num(timeout.strip_prefix("timeout_ms=")?)?.map(Duration::from_millis),
            memory: num(memory.strip_prefix("memory=")?)?,
        })
    }
}

/// A cache dir that passed the trust rule, for one engine.
pub(crate) struct DiskCache {
    dir: PathBuf,
    policy: TrustPolicy,
    engine_hash: [u8; 32],
    compat_tag: String,
    warned: AtomicBool,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Opens (creating what is missing of it, 0700) a cache dir for `engine`; `None`,
    /// with a warning, when it is not a plain absolute path, fails the trust rule, or
    /// cannot be created.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Option<DiskCache> {
        let policy = TrustPolicy::current_user();
        let untrusted = |e: virt_hooks_core::backend::Untrusted| {
            tracing::warn!(dir = %dir.display(), reason = %e.reason(), "untrusted WASM cache dir not used; compiling in memory");
        };
        if let Some(why) = not_plain(dir) {
            tracing::warn!(dir = %dir.display(), why, "WASM cache dir not used; compiling in memory");
            return None;
        }
        // Nothing is created below an untrusted directory (as root, that would be
        // mkdir at a path someone else chose): each missing directory is made in one
        // that passes the trust rule just then, and is checked itself before anything
        // is made in it. With no `..` in `dir`, a missing prefix means every longer
        // one is missing too, and each parent checked is the one the kernel uses.
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|d| matches!(fs::symlink_metadata(d), Err(e) if e.kind() == io::ErrorKind::NotFound))
            .collect();
        for new in missing.iter().rev() {
            if let Err(e) = policy.check_dir(new.parent().unwrap_or(Path::new("/"))) {
                untrusted(e);
                return None;
            }
            match fs::DirBuilder::new().mode(0o700).create(new) {
                // Made by someone (root or us, the parent passed) meanwhile: checked next.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot create the WASM cache dir; compiling in memory");
                    return None;
                }
                Ok(()) => {}
            }
        }
        if let Err(e) = policy.check_dir(dir) {
            untrusted(e);
            return None;
        }
        let engine_hash = engine_hash(engine);
        Some(DiskCache {
            dir: dir.to_owned(),
            policy,
            compat_tag: hex(&engine_hash[..8]),
            engine_hash,
            warned: AtomicBool::new(false),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, digest: &[u8; 32]) -> PathBuf {
        self.side_path(digest, "cwasm")
    }

    fn side_path(&self, digest: &[u8; 32], extension: &str) -> PathBuf {
        self.dir
            .join(format!("{}-{}.{extension}", hex(digest), self.compat_tag))
    }

    /// Takes the compile lock of `digest`'s entry (`flock` on a `.lock` file beside
    /// it), waiting for another process or thread compiling the same module for this
    /// engine until `deadline`. `Ok(None)` when no lock can be had here (the dir is no
    /// longer trusted, or the lock file is not ours): compile without it.
    ///
    /// # Errors
    /// How long it waited, when the deadline passed first.
    pub(crate) fn lock(&self, digest: &[u8; 32], deadline: Option<Instant>) -> Result<Option<CompileLock>, Duration> {
        if !self.still_trusted() {
            return Ok(None);
        }
        let path = self.side_path(digest, "lock");
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|file| self.own_file(&file).map(|()| file))
        {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "WASM compile lock not used");
                return Ok(None);
            }
        };
        let started = Instant::now();
        loop {
            // SAFETY: a valid descriptor we own.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(CompileLock { _file: file }));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.kind() != io::ErrorKind::Interrupted {
                tracing::warn!(path = %path.display(), error = %err, "WASM compile lock not used");
                return Ok(None);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(started.elapsed());
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// A regular file owned by the effective uid and not writable by group or others.
    fn own_file(&self, file: &fs::File) -> io::Result<()> {
        let meta = file.metadata()?;
        self.policy
            .file_problem(&meta)
            .map_err(|p| io::Error::other(p.to_string()))?;
        if meta.uid() != self.policy.uid() {
            return Err(io::Error::other(format!(
                "owned by uid {}, not the effective uid {}",
                meta.uid(),
                self.policy.uid()
            )));
        }
        Ok(())
    }

    /// A compile of `digest` that failed for its limits, recorded by
    /// [`DiskCache::record_failure`], if one is there and was made with limits at least
    /// as large as `limits`: trying again would fail the same way.
    pub(crate) fn failure(&self, digest: &[u8; 32], limits: CompileLimits) -> Option<String> {
        if !self.still_trusted() {
            return None;
        }
        let path = self.side_path(digest, "failed");
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .ok()?;
        self.own_file(&file).ok()?;
        let mut text = String::new();
        (&mut file).take(MAX_FAILURE).read_to_string(&mut text).ok()?;
        let (head, why) = text.split_once('\n')?;
        let recorded = CompileLimits::parse(head)?;
        recorded.covers(limits).then(|| why.trim_end().to_owned())
    }

    /// Records that compiling `digest` under `limits` failed, and why; failures are
    /// logged, never fatal.
    pub(crate) fn record_failure(&self, digest: &[u8; 32], limits: CompileLimits, why: &str) {
        if !self.still_trusted() {
            return;
        }
        let path = self.side_path(digest, "failed");
        let write = || -> io::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            let why: String = why
                .chars()
                .filter(|c| *c != '\n')
                .take(MAX_FAILURE as usize / 2)
                .collect();
            writeln!(tmp, "{}\n{why}", limits.render())?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!(path = %path.display(), error = %e, "cannot record the WASM compile failure");
        }
    }

    /// Forgets a recorded failure of `digest` (it compiled since).
    pub(crate) fn clear_failure(&self, digest: &[u8; 32]) {
        let _ = fs::remove_file(self.side_path(digest, "failed"));
    }

    /// The dir still passes the trust rule (its owner could have loosened it since).
    fn still_trusted(&self) -> bool {
        match self.policy.check_dir(&self.dir) {
            Ok(()) => true,
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), reason = %e.reason(), "WASM cache dir no longer trusted; compiling in memory");
                }
                false
            }
        }
    }

    /// The compiled module for the module bytes whose SHA-256 is `digest`, if a usable
    /// entry exists; anything unusable is logged and left for [`DiskCache::store`] to
    /// replace.
    pub(crate) fn load(&self, engine: &Engine, digest: &[u8; 32]) -> Option<Module> {
        if !self.still_trusted() {
            return None;
        }
        let path = self.entry_path(digest);
        let data = match self.read_entry(&path, digest) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "WASM cache entry not used; recompiling");
                return None;
            }
        };
        let code = match self.check_entry(&data, digest) {
            Ok(code) => code,
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "WASM cache entry not used; recompiling");
                return None;
            }
        };
        // SAFETY: `deserialize` runs whatever native code `code` holds, and wasmtime
        // validates it only lightly (header, version, engine settings), so it is safe
        // exactly when the bytes are what this program wrote. They are: the dir passed
        // the trust rule just now (only root and the effective uid can create, replace
        // or rename anything in it or above it); the entry was opened without following
        // a symlink and its open file is a regular file owned by the effective uid that
        // group and others cannot write, so only this uid (or root) wrote it; and its
        // checksummed header binds it to the SHA-256 of the module being loaded and to
        // this engine, so a swapped, foreign or torn entry was refused above.
        match unsafe { Module::deserialize(engine, code) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable WASM cache entry; recompiling");
                None
            }
        }
    }

    /// Reads an entry that is a regular file owned by the effective uid and not
    /// writable by group or others, through the file descriptor that was checked; the
    /// rest of it only if it is at most [`MAX_ENTRY`] bytes and its header is the one
    /// expected for `digest` and this engine.
    fn read_entry(&self, path: &Path, digest: &[u8; 32]) -> io::Result<Vec<u8>> {
        let mut file = OpenOptions::new()
            .read(true)
            // No symlinks (ELOOP); a planted FIFO must not block the open.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::other("it is a symlink"),
                _ => e,
            })?;
        self.own_file(&file)?;
        let len = file.metadata()?.len();
        if len > MAX_ENTRY {
            return Err(io::Error::other(format!("{len} bytes, more than {MAX_ENTRY}")));
        }
        if len < HEADER_LEN as u64 {
            return Err(io::Error::other("not an entry of this format"));
        }
        let mut data = vec![0; HEADER_LEN];
        file.read_exact(&mut data)?;
        self.check_header(&data, digest).map_err(io::Error::other)?;
        // A file grown since `fstat` is cut here, and then fails the checksum.
        let rest = len - HEADER_LEN as u64;
        data.reserve_exact(usize::try_from(rest).unwrap_or(0));
        file.take(rest).read_to_end(&mut data)?;
        Ok(data)
    }

    /// Whether `header` (the first [`HEADER_LEN`] bytes of an entry) names the module
    /// whose SHA-256 is `digest` and this engine.
    fn check_header(&self, header: &[u8], digest: &[u8; 32]) -> Result<(), &'static str> {
        if header.len() < HEADER_LEN || !header.starts_with(MAGIC) {
            return Err("not an entry of this format");
        }
        let (module, engine) = header[MAGIC.len()..HEADER_LEN - 32].split_at(32);
        if module != digest.as_slice() {
            return Err("compiled from another module");
        }
        if engine != self.engine_hash.as_slice() {
            return Err("compiled by another engine");
        }
        Ok(())
    }

    /// The serialized module inside `data`, if its checksum holds and its header names
    /// this module and this engine.
    fn check_entry<'a>(&self, data: &'a [u8], digest: &[u8; 32]) -> Result<&'a [u8], &'static str> {
        self.check_header(data, digest)?;
        let (header, code) = data.split_at(HEADER_LEN);
        let (bound, sum) = header.split_at(HEADER_LEN - 32);
        if checksum(bound, code).as_slice() != sum {
            return Err("checksum mismatch (corrupt or torn)");
        }
        Ok(code)
    }

    /// Writes the entry for `digest` (replacing whatever is there), unless the dir is
    /// no longer trusted; failures are logged, never fatal.
    pub(crate) fn store(&self, digest: &[u8; 32], module: &Module) {
        if !self.still_trusted() {
            return;
        }
        let path = self.entry_path(digest);
        let write = || -> wasmtime::Result<()> {
            let code = module.serialize()?;
            // Never read back: not worth writing.
            if (HEADER_LEN + code.len()) as u64 > MAX_ENTRY {
                wasmtime::bail!("{} bytes of code, more than an entry may hold", code.len());
            }
            let mut bound = Vec::with_capacity(HEADER_LEN - 32);
            bound.extend_from_slice(MAGIC);
            bound.extend_from_slice(digest);
            bound.extend_from_slice(&self.engine_hash);
            // A new file (mode 0600, ours) renamed over the entry: readers never see
            // half of one, and a symlink or foreign file there is replaced, not followed.
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            tmp.write_all(&bound)?;
            tmp.write_all(&checksum(&bound, &code))?;
            tmp.write_all(&code)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the WASM cache entry");
        }
    }
}

/// Why `dir` cannot be a cache dir whatever its owners: relative (to a working
/// directory nobody chose for it), or with a `.` or `..` component (the trust rule
/// checks each prefix as written, but after a missing or symlinked directory `..`
/// leads somewhere else).
fn not_plain(dir: &Path) -> Option<&'static str> {
    if !dir.is_absolute() {
        return Some("it is a relative path");
    }
    // On the bytes: `Path::components` drops inner `.` components.
    let dotted = dir
        .as_os_str()
        .as_bytes()
        .split(|&b| b == b'/')
        .any(|c| c == b"." || c == b"..");
    dotted.then_some("it has a `.` or `..` component")
}

fn checksum(bound: &[u8], code: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(bound);
    h.update(code);
    h.finalize().into()
}

/// SHA-256 of wasmtime's compatibility hash (its version and every setting that
/// changes compiled code).
fn engine_hash(engine: &Engine) -> [u8; 32] {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            let d = self.0.clone().finalize();
            u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
