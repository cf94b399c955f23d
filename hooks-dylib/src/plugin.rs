//! `DylibHook`: a loaded plugin as a [`Hook`]; builds the C invocation and captures the
//! plugin's output through the `virt_hook_io` callbacks.

use std::cell::Cell;
use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use virt_hooks_core::backend::PluginConfig;
use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::outcome::LogLevel;
use virt_hooks_core::{Driver, EventArgs, Hook, HookOutcome, HookStatus, Invocation, LoadError};
use virt_hooks_plugin::abi::{
    virt_hook_config_item, virt_hook_event, virt_hook_init, virt_hook_invocation, virt_hook_io, virt_hook_output,
    VIRT_HOOK_ABI_VERSION,
};

use crate::library::{Entry, Library};

/// A native plugin as a hook.
#[derive(Debug, Clone)]
pub struct DylibHook {
    lib: Arc<Library>,
    /// A version 2 plugin's instance (`None` for version 1).
    instance: Option<Arc<Instance>>,
    path: PathBuf,
    name: String,
    timeout: Option<Duration>,
    max_output: usize,
    guarded_input: bool,
}

impl DylibHook {
    /// Loads (or reuses) the plugin at `path`, with an empty `[config]`.
    ///
    /// # Errors
    /// See [`DylibHook::load_with_config`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::load_with_config(path, &PluginConfig::new())
    }

    /// Loads (or reuses) the plugin at `path`; a version 2 plugin's `init` gets `config`
    /// (the sidecar's `[config]`) and makes the instance every call of this hook (and
    /// its clones) gets. The library is shared by every hook loaded from the same real
    /// path, the instance is not: each load runs `init` with its own config, and `fini`
    /// runs when the last clone of that hook is dropped.
    ///
    /// # Errors
    /// See [`Library::load`]; and `init` refusing (a non-zero status), with what it
    /// wrote as the message.
    pub fn load_with_config(path: impl AsRef<Path>, config: &PluginConfig) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let lib = Library::load(path)?;
        let instance = match lib.entry() {
            Entry::V1 { .. } => None,
            Entry::V2 { .. } => Some(Arc::new(Instance::new(&lib, config)?)),
        };
        Ok(DylibHook {
            lib,
            instance,
            path: path.to_owned(),
            name: path.display().to_string(),
            timeout: None,
            max_output: 16 << 20,
            guarded_input: false,
        })
    }

    /// A debug mode for testing plugins: the input is followed by its NUL byte and then
    /// an unmapped page, so a read past the end crashes the call (`SIGSEGV`) instead of
    /// reading the heap; after the call the input is made unreadable and never
    /// reused, so a plugin that kept the pointer crashes when it reads it. Each call
    /// leaves its input's pages mapped: not for production. `hookctl simulate --strict`
    /// and `hookctl run --strict` turn it on.
    pub fn with_guarded_input(mut self, guarded: bool) -> Self {
        self.guarded_input = guarded;
        self
    }

    /// A timeout. The call cannot be interrupted: past the timeout the hook is reported
    /// `TimedOut` and the call finishes in the background. By default there is none,
    /// and the call runs on the caller's thread.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Cap on each of stdout and stderr; more is dropped and reported. By default 16 MiB.
    pub fn with_max_output(mut self, max_output: usize) -> Self {
        self.max_output = max_output;
        self
    }

    /// The loaded library.
    pub fn library(&self) -> &Library {
        &self.lib
    }
}

/// Output collected through the `virt_hook_io` callbacks.
#[derive(Debug)]
struct Capture {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Lines logged (version 2), capped as [`HookOutcome::push_log`] caps them.
    log: HookOutcome,
    cap: usize,
    stdout_truncated: bool,
    stderr_truncated: bool,
    /// Writes ignored (late or from another thread) while this call ran.
    stray_writes: u64,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            stdout: Vec::new(),
            stderr: Vec::new(),
            log: HookOutcome::success(),
            cap: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            stray_writes: 0,
        }
    }
}

/// The `[config]` table as the ABI passes it: NUL-terminated copies and the items
/// pointing at them, alive as long as the instance.
struct ConfigTable {
    _text: Vec<CString>,
    items: Vec<virt_hook_config_item>,
}

impl ConfigTable {
    fn new(config: &PluginConfig) -> Self {
        let mut text = Vec::with_capacity(config.len() * 2);
        let mut items = Vec::with_capacity(config.len());
        for (key, value) in config.iter() {
            // Keys are letters, digits, `_`, `-`, and values hold no NUL (PluginConfig
            // refuses them): neither conversion can fail.
            let key = CString::new(key).unwrap_or_default();
            let value = CString::new(value.to_string()).unwrap_or_default();
            items.push(virt_hook_config_item {
                key: key.as_ptr(),
                value: value.as_ptr(),
            });
            text.push(key);
            text.push(value);
        }
        ConfigTable { _text: text, items }
    }

    fn raw(&self) -> (*const virt_hook_config_item, usize) {
        if self.items.is_empty() {
            (std::ptr::null(), 0)
        } else {
            (self.items.as_ptr(), self.items.len())
        }
    }
}

/// What a version 2 plugin's `init` made: handed to every call, to `fini` when the
/// last hook using it is dropped.
pub(crate) struct Instance {
    lib: Arc<Library>,
    ptr: *mut c_void,
    config: ConfigTable,
    /// What `init` logged, handed to the first call's outcome.
    init_log: std::sync::Mutex<Vec<virt_hooks_core::outcome::LogLine>>,
    /// Whether `init_log` still holds lines: calls after the first take no lock.
    init_log_pending: std::sync::atomic::AtomicBool,
}

// SAFETY: the ABI requires the instance to be safe to share between the threads that
// call the plugin, and the config table is only read; the CStrings it points into are
// owned by it and never change.
unsafe impl Send for Instance {}
// SAFETY: as for Send.
unsafe impl Sync for Instance {}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.lib.path())
            .field("config_len", &self.config.items.len())
            .finish_non_exhaustive()
    }
}

impl Instance {
    fn new(lib: &Arc<Library>, config: &PluginConfig) -> Result<Self, LoadError> {
        let config = ConfigTable::new(config);
        let Entry::V2 { init: Some(init), .. } = lib.entry() else {
            return Ok(Instance {
                lib: Arc::clone(lib),
                ptr: std::ptr::null_mut(),
                config,
                init_log: std::sync::Mutex::default(),
                init_log_pending: std::sync::atomic::AtomicBool::new(false),
            });
        };
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(lib.path().as_os_str().as_bytes()).unwrap_or_default();
        let mut capture = Capture {
            cap: 64 << 10,
            ..Capture::default()
        };
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let code = {
            // SAFETY: `capture` is not touched until `activation` is dropped, at the end
            // of this block, on this thread.
            let (activation, token) = unsafe { Activation::new(&mut capture) };
            let out = output(token);
            let (items, len) = config.raw();
            let raw = virt_hook_init {
                size: size_of::<virt_hook_init>() as u32,
                path: path.as_ptr(),
                config: items,
                config_len: len,
                out: &out,
            };
            // SAFETY: `lib` stays loaded (never unloaded) and keeps its path alive.
            let running = unsafe { Running::enter(lib.path()) };
            // SAFETY: the plugin's `init`, with the ABI's type; everything `raw` points to
            // lives through the call (`path`, the config table, `out` and its callbacks).
            let code = unsafe { init(&raw, &mut ptr) };
            drop(running);
            drop(activation);
            code
        };
        if code != 0 {
            // The reason first (what init logged at error), then the rest, on one line.
            let stderr = String::from_utf8_lossy(&capture.stderr);
            let message = virt_hooks_core::outcome::failure_text(&capture.log.log, &stderr).replace('\n', "; ");
            return Err(LoadError::new(
                lib.path(),
                "dylib",
                LoadErrorKind::InitFailed { code, message },
            ));
        }
        for line in &capture.log.log {
            tracing::info!(plugin = %lib.path().display(), level = %line.level, "init: {}", line.message);
        }
        Ok(Instance {
            lib: Arc::clone(lib),
            ptr,
            config,
            init_log_pending: std::sync::atomic::AtomicBool::new(!capture.log.log.is_empty()),
            init_log: std::sync::Mutex::new(std::mem::take(&mut capture.log.log)),
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Entry::V2 { fini: Some(fini), .. } = self.lib.entry() {
            // SAFETY: the library is never unloaded and keeps its path alive.
            let _running = unsafe { Running::enter(self.lib.path()) };
            // SAFETY: the plugin's `fini` with what its `init` stored, once, after every
            // call that used it has returned (calls hold the instance).
            unsafe { fini(self.ptr) };
        }
    }
}

/// The `virt_hook_output` for the call whose token is `token`.
fn output(token: usize) -> virt_hook_output {
    virt_hook_output {
        size: size_of::<virt_hook_output>() as u32,
        ctx: token as *mut c_void,
        write_stdout: Some(write_stdout),
        write_stderr: Some(write_stderr),
        log: Some(write_log),
    }
}

thread_local! {
    /// The call running on this thread: its token and its capture. Callbacks write only
    /// when their `ctx` is this token, so a plugin that keeps the `io` struct and calls
    /// it late, or from another thread, is ignored instead of writing through a dangling
    /// pointer.
    static ACTIVE: Cell<(usize, *mut Capture)> = const { Cell::new((0, std::ptr::null_mut())) };
}

thread_local! {
    /// The path of the plugin whose code this thread is running, for a crash handler.
    static RUNNING: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Marks this thread as running a plugin's code until dropped. Not `Send`: it must be
/// dropped on the thread whose mark it clears.
pub(crate) struct Running(std::marker::PhantomData<*const ()>);

impl Running {
    /// # Safety
    /// The bytes of `path` must stay alive and in place until the guard is dropped, and
    /// the guard must be dropped (not leaked): [`with_running_plugin`] reads them through
    /// the raw pointer left in this thread's `RUNNING` until then.
    pub(crate) unsafe fn enter(path: &Path) -> Running {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        RUNNING.with(|r| r.set((bytes.as_ptr(), bytes.len())));
        Running(std::marker::PhantomData)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set((std::ptr::null(), 0)));
    }
}

/// Calls `f` with the path of the native plugin whose code this thread is running (its
/// `call`, or its loading), if any. Only a thread-local read and the call: safe from a
/// signal handler for SIGSEGV and friends, which runs on the faulting thread, so a
/// program can say which plugin crashed it.
///
/// ```
/// assert_eq!(virt_hooks_dylib::with_running_plugin(|path| path.len()), None);
/// ```
pub fn with_running_plugin<R>(f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let (ptr, len) = RUNNING.with(Cell::get);
    if ptr.is_null() {
        return None;
    }
    // SAFETY: a non-null RUNNING was set by `Running::enter`, whose contract keeps those
    // `len` bytes alive and in place until its guard clears RUNNING again on this thread
    // (the guard is not `Send`); RUNNING is thread-local, so nothing else changes it
    // meanwhile. The slice is only lent to `f`.
    Some(f(unsafe { std::slice::from_raw_parts(ptr, len) }))
}

/// How many writes through plugins' output callbacks were ignored in this process so
/// far (after a call returned, or from another thread): a host that drops a hook (its
/// `fini`) or ends takes the difference to report writes no call was there to count.
pub fn stray_writes() -> u64 {
    STRAY_WRITES.load(Ordering::Relaxed)
}

/// Tokens handed to plugins as `ctx`: never 0, never reused.
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);
/// Writes ignored because they came after the call or from another thread.
static STRAY_WRITES: AtomicU64 = AtomicU64::new(0);

/// The capture for `ctx` if `ctx` is the call running on this thread.
fn active_capture(ctx: *mut c_void) -> Option<*mut Capture> {
    let (token, capture) = ACTIVE.with(Cell::get);
    if token != 0 && ctx as usize == token {
        return Some(capture);
    }
    if STRAY_WRITES.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!("a native plugin wrote output after its call returned or from another thread; ignored");
    }
    None
}

/// Makes a capture the active one on this thread for the life of the guard. Not `Send`:
/// it must be dropped on the thread whose capture it clears.
struct Activation(std::marker::PhantomData<*const ()>);

impl Activation {
    /// # Safety
    /// `capture` must be valid for writes, and neither read, written nor moved by anyone
    /// but the `virt_hook_io` callbacks, until the guard is dropped; and the guard must
    /// be dropped (not leaked).
    unsafe fn new(capture: *mut Capture) -> (Self, usize) {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        ACTIVE.with(|a| a.set((token, capture)));
        (Activation(std::marker::PhantomData), token)
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set((0, std::ptr::null_mut())));
    }
}

/// # Safety
/// `data` is null or points to `len` bytes readable for the duration of the call.
unsafe fn append(buf: &mut Vec<u8>, truncated: &mut bool, cap: usize, data: *const u8, len: usize) {
    if data.is_null() || len == 0 {
        return;
    }
    // SAFETY: not null, so `len` readable bytes by this function's contract; they are
    // copied into `buf` before it returns.
    let data = unsafe { std::slice::from_raw_parts(data, len) };
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..len.min(room)]);
    *truncated |= len > room;
}

/// `virt_hook_io.write_stdout`.
///
/// # Safety
/// The ABI's contract for the callbacks: `data` is null or points to `len` bytes
/// readable for the duration of the call.
unsafe extern "C" fn write_stdout(ctx: *mut c_void, data: *const u8, len: usize) {
    let Some(capture) = active_capture(ctx) else { return };
    // SAFETY: `ctx` is the token of the call running on this very thread, so `capture`
    // is that call's `Capture`, which `Call::run` keeps alive and leaves alone until the
    // plugin's `call` has returned (`Activation::new`'s contract): this is the only
    // reference to it while the callback runs.
    if let Some(c) = unsafe { capture.as_mut() } {
        // SAFETY: `data` and `len` as this function's contract (the ABI) says.
        unsafe { append(&mut c.stdout, &mut c.stdout_truncated, c.cap, data, len) };
    }
}

/// `virt_hook_io.write_stderr`.
///
/// # Safety
/// As for [`write_stdout`].
unsafe extern "C" fn write_stderr(ctx: *mut c_void, data: *const u8, len: usize) {
    let Some(capture) = active_capture(ctx) else { return };
    // SAFETY: as in `write_stdout`: this thread's running call's `Capture`, which
    // nothing else touches while the callback runs.
    if let Some(c) = unsafe { capture.as_mut() } {
        // SAFETY: `data` and `len` as this function's contract (the ABI) says.
        unsafe { append(&mut c.stderr, &mut c.stderr_truncated, c.cap, data, len) };
    }
}

/// `virt_hook_output.log`.
///
/// # Safety
/// As for [`write_stdout`]: `msg` is null or points to `len` readable bytes.
unsafe extern "C" fn write_log(ctx: *mut c_void, level: i32, msg: *const std::ffi::c_char, len: usize) {
    let Some(capture) = active_capture(ctx) else { return };
    if msg.is_null() {
        return;
    }
    // SAFETY: this function's contract (the ABI).
    let bytes = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
    // SAFETY: as in `write_stdout`: this thread's running call's `Capture`.
    if let Some(c) = unsafe { capture.as_mut() } {
        c.log
            .push_log(LogLevel::from_abi(level), &String::from_utf8_lossy(bytes));
    }
}

fn driver_name(driver: Driver) -> &'static CStr {
    match driver.as_str() {
        "daemon" => c"daemon",
        "qemu" => c"qemu",
        "lxc" => c"lxc",
        "libxl" => c"libxl",
        "bhyve" => c"bhyve",
        "network" => c"network",
        _ => c"-",
    }
}

/// Everything one call needs, owned, so it can move to a helper thread for a timeout.
struct Call {
    driver: &'static CStr,
    args: EventArgs,
    input: Option<Arc<[u8]>>,
    state_dir: Option<CString>,
    cap: usize,
    lib: Arc<Library>,
    instance: Option<Arc<Instance>>,
    guarded_input: bool,
}

impl Call {
    fn run(self) -> (i32, Capture) {
        let mut capture = Capture {
            cap: self.cap,
            ..Capture::default()
        };
        // What `init` logged opens the first call's log.
        if let Some(instance) = self
            .instance
            .as_ref()
            .filter(|i| i.init_log_pending.swap(false, Ordering::Relaxed))
        {
            let init_log = std::mem::take(&mut *instance.init_log.lock().unwrap_or_else(|p| p.into_inner()));
            for line in init_log {
                capture.log.push_log(line.level, &line.message);
            }
        }
        let strays_before = STRAY_WRITES.load(Ordering::Relaxed);
        // SAFETY: `capture` is a local that is not touched again until `activation` is
        // dropped, on this thread, below (or during unwinding, which drops `activation`
        // first, as it was declared after `capture`).
        let (activation, token) = unsafe { Activation::new(&mut capture) };
        let (buf, starts) = self.args.raw_parts();
        // The ABI promises a NUL byte after the input, not counted in its length.
        let guarded = self
            .input
            .as_ref()
            .filter(|_| self.guarded_input)
            .and_then(|d| crate::guard::GuardedInput::new(d));
        let input = self.input.as_ref().filter(|_| guarded.is_none()).map(|d| {
            let mut with_nul = Vec::with_capacity(d.len() + 1);
            with_nul.extend_from_slice(d);
            with_nul.push(0);
            with_nul
        });
        let (input, input_len) = match (&guarded, &input) {
            (Some(g), _) => (g.as_ptr(), g.len()),
            (None, Some(d)) => (d.as_ptr(), d.len() - 1),
            (None, None) => (std::ptr::null(), 0),
        };
        // The shared buffer already holds NUL-terminated arguments: no copy, no scan.
        let arg = |i: usize| buf[starts[i]..].as_ptr().cast::<std::ffi::c_char>();
        // SAFETY: `self.lib` keeps the library, and so its path, alive through the call,
        // and the guard is dropped right after it, on this thread.
        let running = unsafe { Running::enter(self.lib.path()) };
        let code = match (self.lib.entry(), &self.instance) {
            (Entry::V2 { call, .. }, Some(instance)) => {
                let out = output(token);
                let (config, config_len) = instance.config.raw();
                let raw = virt_hook_event {
                    size: size_of::<virt_hook_event>() as u32,
                    driver: self.driver.as_ptr(),
                    object: arg(0),
                    op: arg(1),
                    subop: arg(2),
                    extra: arg(3),
                    input,
                    input_len,
                    out: &out,
                    instance: instance.ptr,
                    state_dir: self.state_dir.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
                    config,
                    config_len,
                };
                // SAFETY: the plugin's v2 `call`, with the ABI's type, from a library that
                // is never unloaded. Everything `raw` points to outlives the call: the
                // arguments in `self.args`, the static driver name, `input` (NUL after
                // it), `out` and its callbacks (which check `ctx` against this thread's
                // active call), the instance and its config table (held by `self`).
                unsafe { call(&raw) }
            }
            (Entry::V1 { call }, _) => {
                let raw = virt_hook_invocation {
                    abi_version: VIRT_HOOK_ABI_VERSION,
                    driver: self.driver.as_ptr(),
                    object: arg(0),
                    op: arg(1),
                    subop: arg(2),
                    extra: arg(3),
                    input,
                    input_len,
                    io: virt_hook_io {
                        ctx: token as *mut c_void,
                        write_stdout: Some(write_stdout),
                        write_stderr: Some(write_stderr),
                    },
                };
                // SAFETY: as for v2, with the v1 invocation. Native plugins are trusted
                // code by contract: what the call itself does is theirs to get right.
                unsafe { call(&raw) }
            }
            // `load_with_config` makes an instance for every version 2 plugin.
            (Entry::V2 { .. }, None) => 2,
        };
        drop(running);
        drop(activation);
        capture.stray_writes = STRAY_WRITES.load(Ordering::Relaxed) - strays_before;
        (code, capture)
    }
}

fn outcome(code: i32, c: Capture) -> HookOutcome {
    let mut out = HookOutcome::exited(code).with_stdout(c.stdout).with_stderr(c.stderr);
    out.log = c.log.log;
    out.warnings = c.log.warnings;
    out.stdout_truncated = c.stdout_truncated;
    out.stderr_truncated = c.stderr_truncated;
    if c.stray_writes > 0 {
        out.warnings.push(format!(
            "{} write(s) through its output callbacks (virt_hook_io, virt_hook_output) from another thread or after a call returned were ignored (they are valid only during `call`, on its thread)",
            c.stray_writes
        ));
    }
    out
}

#[async_trait]
impl Hook for DylibHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "dylib"
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    /// It reports `TimedOut` at its timeout itself (the call goes on in the background).
    fn stop_grace(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        let start = Instant::now();
        use std::os::unix::ffi::OsStrExt;
        let call = Call {
            driver: driver_name(inv.driver()),
            args: inv.args().clone(),
            input: inv.input_shared().cloned(),
            state_dir: inv
                .state_dir()
                .and_then(|d| CString::new(d.as_os_str().as_bytes()).ok()),
            cap: self.max_output,
            lib: Arc::clone(&self.lib),
            instance: self.instance.clone(),
            guarded_input: self.guarded_input,
        };
        let timeout = inv.timeout_with(self.timeout);
        let mut result = match virt_hooks_core::backend::blocking_pool() {
            // A native call may block as long as it likes: never on an async worker.
            Some(rt) => off_executor(&rt, call, timeout, &self.name).await,
            None => match timeout {
                None => {
                    let (code, capture) = call.run();
                    outcome(code, capture)
                }
                Some(limit) => {
                    let (tx, rx) = mpsc::sync_channel(1);
                    let spawned = std::thread::Builder::new().name("dylib-hook".into()).spawn(move || {
                        let _ = tx.send(call.run());
                    });
                    match spawned {
                        Err(e) => HookOutcome::failed(virt_hooks_core::HookError::Io(e)),
                        Ok(_) => match rx.recv_timeout(limit) {
                            Ok((code, capture)) => outcome(code, capture),
                            Err(mpsc::RecvTimeoutError::Timeout) => still_running(limit),
                            Err(mpsc::RecvTimeoutError::Disconnected) => {
                                HookOutcome::new(HookStatus::Crashed("the plugin's call ended without a result".into()))
                            }
                        },
                    }
                }
            },
        };
        result.duration = start.elapsed();
        result
    }
}

fn still_running(limit: Duration) -> HookOutcome {
    HookOutcome::new(HookStatus::TimedOut(limit)).with_warning(
        "a native call cannot be interrupted: it is still running in the background, and its output will be dropped",
    )
}

/// Runs the call on tokio's blocking pool and waits for it there, up to `timeout`. If
/// this future is dropped first, the call finishes on its own thread and its result is
/// dropped; that is logged, since the plugin kept running after its caller gave up.
async fn off_executor(rt: &tokio::runtime::Handle, call: Call, timeout: Option<Duration>, name: &str) -> HookOutcome {
    struct Abandoned<'a> {
        name: &'a str,
        armed: bool,
    }
    impl Drop for Abandoned<'_> {
        fn drop(&mut self) {
            if self.armed {
                tracing::warn!(plugin = self.name, "native plugin call dropped while running: it finishes on its own thread and its result is discarded");
            }
        }
    }
    let mut guard = Abandoned { name, armed: true };
    let mut task = rt.spawn_blocking(move || call.run());
    let mut deadline = timeout.map(futures_timer::Delay::new);
    let finished = std::future::poll_fn(|cx| {
        use std::future::Future;
        use std::pin::Pin;
        use std::task::Poll;
        if let Poll::Ready(done) = Pin::new(&mut task).poll(cx) {
            return Poll::Ready(Some(done));
        }
        match deadline.as_mut().map(|d| Pin::new(d).poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await;
    guard.armed = false;
    match finished {
        Some(Ok((code, capture))) => outcome(code, capture),
        Some(Err(e)) => HookOutcome::new(HookStatus::Crashed(format!(
            "the plugin's call ended without a result: {e}"
        ))),
        None => still_running(timeout.unwrap_or_default()),
    }
}
