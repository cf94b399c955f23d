//! `DylibHook`: a loaded plugin as a [`Hook`]; builds the C invocation and captures the
//! plugin's output through the `virt_hook_io` callbacks.

use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use virt_hooks_core::{Driver, EventArgs, Hook, HookOutcome, HookStatus, Invocation, LoadError};
use virt_hooks_plugin::abi::{virt_hook_invocation, virt_hook_io, VIRT_HOOK_ABI_VERSION};

use crate::library::{CallFn, Library};

/// A native plugin as a hook.
#[derive(Debug, Clone)]
pub struct DylibHook {
    lib: Arc<Library>,
    path: PathBuf,
    name: String,
    timeout: Option<Duration>,
    max_output: usize,
}

impl DylibHook {
    /// Loads (or reuses) the plugin at `path`.
    ///
    /// # Errors
    /// See [`Library::load`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let lib = Library::load(path)?;
        Ok(DylibHook {
            lib,
            path: path.to_owned(),
            name: path.display().to_string(),
            timeout: None,
            max_output: 16 << 20,
        })
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
#[derive(Debug, Default)]
struct Capture {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    cap: usize,
    stdout_truncated: bool,
    stderr_truncated: bool,
    /// Writes ignored (late or from another thread) while this call ran.
    stray_writes: u64,
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
    call: CallFn,
    driver: &'static CStr,
    args: EventArgs,
    input: Option<Arc<[u8]>>,
    cap: usize,
    lib: Arc<Library>,
}

impl Call {
    fn run(self) -> (i32, Capture) {
        let mut capture = Capture {
            cap: self.cap,
            ..Capture::default()
        };
        let strays_before = STRAY_WRITES.load(Ordering::Relaxed);
        // SAFETY: `capture` is a local that is not touched again until `activation` is
        // dropped, on this thread, below (or during unwinding, which drops `activation`
        // first, as it was declared after `capture`).
        let (activation, token) = unsafe { Activation::new(&mut capture) };
        let (buf, starts) = self.args.raw_parts();
        let (input, input_len) = match &self.input {
            Some(d) => (d.as_ptr(), d.len()),
            None => (std::ptr::null(), 0),
        };
        let raw = virt_hook_invocation {
            abi_version: VIRT_HOOK_ABI_VERSION,
            driver: self.driver.as_ptr(),
            // The shared buffer already holds NUL-terminated arguments: no copy, no scan.
            object: buf[starts[0]..].as_ptr().cast(),
            op: buf[starts[1]..].as_ptr().cast(),
            subop: buf[starts[2]..].as_ptr().cast(),
            extra: buf[starts[3]..].as_ptr().cast(),
            input,
            input_len,
            io: virt_hook_io {
                ctx: token as *mut c_void,
                write_stdout: Some(write_stdout),
                write_stderr: Some(write_stderr),
            },
        };
        // SAFETY: `self.lib` keeps the library, and so its path, alive through the call,
        // and the guard is dropped right after it, on this thread.
        let running = unsafe { Running::enter(self.lib.path()) };
        // SAFETY: `call` is the plugin's entry with the type the ABI gives it, from a
        // library that is never unloaded (the process-wide table and `self.lib` hold
        // it). Everything `raw` points to outlives the call: the NUL-terminated
        // arguments in `self.args`, the static driver name, the input in `self.input`
        // (or null with length 0), and the two callbacks, which check `ctx` against this
        // thread's active call before they touch `capture`. Native plugins are trusted
        // code by contract: what the call itself does is theirs to get right.
        let code = unsafe { (self.call)(&raw) };
        drop(running);
        drop(activation);
        capture.stray_writes = STRAY_WRITES.load(Ordering::Relaxed) - strays_before;
        (code, capture)
    }
}

fn outcome(code: i32, c: Capture) -> HookOutcome {
    let mut out = HookOutcome::exited(code).with_stdout(c.stdout).with_stderr(c.stderr);
    out.stdout_truncated = c.stdout_truncated;
    out.stderr_truncated = c.stderr_truncated;
    if c.stray_writes > 0 {
        out.warnings.push(format!(
            "{} write(s) through virt_hook_io from another thread or after a call returned were ignored (the callbacks are valid only during `call`, on its thread)",
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
        let call = Call {
            call: self.lib.call_fn(),
            driver: driver_name(inv.driver()),
            args: inv.args().clone(),
            input: inv.input_shared().cloned(),
            cap: self.max_output,
            lib: Arc::clone(&self.lib),
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
