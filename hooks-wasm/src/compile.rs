//! Compiling a module, bounded: in a child process under a memory limit and a
//! deadline, so a module built to make the compiler work (20,000 locals across 12,000
//! blocks took 29 s and 3.7 GB) costs an event no more than its own timeout.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::{compile_config, EngineConfig};

/// The most module bytes a compiler child reads.
const MAX_MODULE: u64 = 256 << 20;
/// The most compiled bytes taken from a compiler child (as much as a cache entry holds).
const MAX_ARTIFACT: u64 = 256 << 20;
/// What is kept of a compiler child's stderr, for the message.
const MAX_CHILD_STDERR: u64 = 4 << 10;
/// How often the parent looks at a compiler child that has not finished.
const POLL: Duration = Duration::from_millis(2);

/// The default cap on a compiler child's address space: far above what hooks built by
/// clang need (a 150 KB C module peaks at about 60 MB), far below what a module built
/// to exhaust the compiler takes (3.7 GB).
pub const DEFAULT_COMPILE_MEMORY: u64 = 2 << 30;

/// Where and how modules are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In this process: no limit on the time or memory a compile takes. For programs
    /// that run only modules they trust, or cannot start processes.
    InProcess,
    /// In a child process, `program args… ENGINE-SETTINGS`, which must call
    /// [`compiler_child_main`] with the arguments after `args`: the module's bytes go to
    /// its stdin, the compiled code comes back on its stdout. The child runs with an
    /// empty environment, under `RLIMIT_AS` = `memory`, and is killed at the load's
    /// deadline.
    Child {
        /// The program: usually the embedding program itself, told by `arg0` or `args`
        /// to be a compiler (hookctl: its own binary, as `hookctl-compile-wasm`).
        program: PathBuf,
        /// The child's `argv[0]`, if not `program`. A program that runs as something
        /// else depending on its arguments (a hook dispatcher, whose first argument is a
        /// guest's name) must be told by `argv[0]`, which no guest chooses.
        arg0: Option<OsString>,
        /// Arguments before the engine settings.
        args: Vec<OsString>,
        /// The child's address-space limit in bytes ([`DEFAULT_COMPILE_MEMORY`]).
        memory: u64,
    },
}

/// How long a load may spend compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompileBudget {
    /// The hook's own timeout (a WASM hook's is 10 s by default), at least 2 s:
    /// compiling at an event holds that event no longer than running the module may.
    /// No limit for a hook without a timeout. The default.
    #[default]
    HookTimeout,
    /// This long, whatever the hook's timeout: for compiling ahead of events
    /// (`hookctl check` warms the cache so).
    Fixed(Duration),
}

/// Why a compile in a child failed.
#[derive(Debug)]
pub(crate) enum ChildFailure {
    /// It passed its deadline and was killed, having had `cpu` of processor time.
    TimedOut { after: Duration, cpu: Duration, peak: u64 },
    /// It was killed for memory (the allocator failed under `RLIMIT_AS` and aborted) or
    /// by a signal.
    Killed { signal: i32, peak: u64, stderr: String },
    /// wasmtime refused the module: its message.
    Invalid(String),
    /// The child could not be run, or said nothing usable.
    Broken(String),
}

impl ChildFailure {
    /// Whether a later attempt with the same limits would fail the same way: worth
    /// remembering beside the cache entry. A compile that ran out of time while it had
    /// the processor (not one starved by a busy host: others' load must not make a
    /// module uncompilable), or ran out of its own memory limit (not one killed by the
    /// kernel's OOM killer or anyone else).
    pub(crate) fn is_repeatable(&self) -> bool {
        match self {
            ChildFailure::TimedOut { after, cpu, .. } => cpu.as_secs_f64() >= after.as_secs_f64() * MOSTLY_RUNNING,
            ChildFailure::Killed { signal, stderr, .. } => *signal == libc::SIGABRT && out_of_memory(stderr),
            ChildFailure::Invalid(_) | ChildFailure::Broken(_) => false,
        }
    }

    /// Whether it failed for its time or memory limit.
    pub(crate) fn is_limit(&self) -> bool {
        matches!(self, ChildFailure::TimedOut { .. } | ChildFailure::Killed { .. })
    }
}

impl std::fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildFailure::TimedOut { after, cpu, peak } => write!(
                f,
                "compiling it took longer than {:.1} s ({:.1} s of CPU) and was stopped ({} MiB of memory at the end)",
                after.as_secs_f64(),
                cpu.as_secs_f64(),
                peak >> 20
            ),
            ChildFailure::Killed { signal, peak, stderr } => {
                write!(
                    f,
                    "the compiler was killed by signal {signal} ({} MiB of memory at peak)",
                    peak >> 20
                )?;
                if out_of_memory(stderr) {
                    write!(f, ": it ran out of its memory limit")?;
                }
                Ok(())
            }
            ChildFailure::Invalid(why) => f.write_str(why),
            ChildFailure::Broken(why) => write!(f, "the compiler process failed: {why}"),
        }
    }
}

/// How much of its time a compile stopped at its deadline must have spent on the
/// processor for the failure to be the module's.
const MOSTLY_RUNNING: f64 = 0.9;

/// Whether a compiler child's stderr says an allocation failed (its memory limit).
fn out_of_memory(stderr: &str) -> bool {
    stderr.contains("memory allocation") || stderr.contains("out of memory")
}

/// The engine settings a compiler child must build its engine with, as one argument.
pub(crate) fn settings_arg(config: EngineConfig) -> String {
    format!(
        "interruptible={},fuel={}",
        u8::from(config.interruptible),
        u8::from(config.fuel)
    )
}

fn parse_settings(arg: &str) -> Option<EngineConfig> {
    let mut config = EngineConfig {
        pooling: false,
        ..EngineConfig::default()
    };
    for pair in arg.split(',') {
        let (key, value) = pair.split_once('=')?;
        let on = match value {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        match key {
            "interruptible" => config.interruptible = on,
            "fuel" => config.fuel = on,
            _ => return None,
        }
    }
    Some(config)
}

/// The compiler child: reads a module on stdin, compiles it with the engine settings in
/// `args` (the one argument [`Compiler::Child`] appends), and writes wasmtime's
/// serialized module to stdout. Exit 0 on success; 1 with wasmtime's message on stderr
/// when the module is invalid; 2 for a usage error.
///
/// A program offering itself as [`Compiler::Child`] calls this when it sees its compiler
/// argument, before doing anything else:
///
/// ```no_run
/// use std::path::Path;
/// use std::process::ExitCode;
///
/// fn main() -> ExitCode {
///     let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
///     // By argv[0], which no input of the program's chooses.
///     if args.first().is_some_and(|a| Path::new(a).file_name() == Some("my-compile-wasm".as_ref())) {
///         return virt_hooks_wasm::compiler_child_main(&args[1..]);
///     }
///     // … the program, which builds its sandbox with `Compiler::Child { program:
///     // "/proc/self/exe".into(), arg0: Some("my-compile-wasm".into()), args: vec![], memory }`
///     ExitCode::SUCCESS
/// }
/// ```
pub fn compiler_child_main(args: &[OsString]) -> ExitCode {
    let Some(config) = args.first().and_then(|a| a.to_str()).and_then(parse_settings) else {
        eprintln!("usage: ENGINE-SETTINGS (interruptible=0|1,fuel=0|1), the module on stdin");
        return ExitCode::from(2);
    };
    let mut bytes = Vec::new();
    if let Err(e) = io::stdin().lock().take(MAX_MODULE + 1).read_to_end(&mut bytes) {
        eprintln!("cannot read the module: {e}");
        return ExitCode::from(2);
    }
    if bytes.len() as u64 > MAX_MODULE {
        eprintln!("the module is larger than {MAX_MODULE} bytes");
        return ExitCode::from(1);
    }
    let compiled = wasmtime::Engine::new(&compile_config(config))
        .and_then(|engine| wasmtime::Module::new(&engine, &bytes))
        .and_then(|module| module.serialize());
    match compiled {
        Ok(code) => match io::stdout().lock().write_all(&code) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the compiled module: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// Compiles `bytes` in a child of `program`, killed at `timeout`; the serialized module.
pub(crate) fn compile_in_child(
    (program, arg0, args, memory): (&PathBuf, Option<&OsString>, &[OsString], u64),
    config: EngineConfig,
    bytes: &[u8],
    timeout: Option<Duration>,
) -> Result<Vec<u8>, ChildFailure> {
    let started = Instant::now();
    let mut command = Command::new(program);
    if let Some(arg0) = arg0 {
        command.arg0(arg0);
    }
    command
        .args(args)
        .arg(settings_arg(config))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limit = libc::rlimit {
        rlim_cur: memory,
        rlim_max: memory,
    };
    // A backstop for the deadline should this process die without killing the child.
    let cpu = timeout.map(|t| t.as_secs().saturating_add(2));
    // SAFETY: between fork and exec only `setrlimit` and `prctl`, which are
    // async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(secs) = cpu {
                let cpu = libc::rlimit {
                    rlim_cur: secs,
                    rlim_max: secs,
                };
                if libc::setrlimit(libc::RLIMIT_CPU, &cpu) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Dies with the thread that waits for it (a dispatcher killed mid-compile).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ChildFailure::Broken(format!("cannot start `{}`: {e}", program.display())))?;
    let pid = child.id() as libc::pid_t;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ChildFailure::Broken("no pipes to the compiler".into()));
    };
    let deadline = timeout.and_then(|t| started.checked_add(t));
    // Scoped: the module is written from where it is, not copied; every thread ends
    // once the child is gone (its pipes close).
    thread::scope(|scope| {
        // A child that dies early closes its stdin: the write then fails, which is fine.
        scope.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        let reader = scope.spawn(move || read_capped(stdout, MAX_ARTIFACT + 1));
        let errors = scope.spawn(move || read_capped(stderr, MAX_CHILD_STDERR));
        let ended = wait_until(&mut child, pid, deadline, timeout);
        let code = reader.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&errors.join().unwrap_or_default())
            .trim()
            .to_owned();
        outcome(ended?, code, stderr, started)
    })
}

/// Waits for the compiler child until `deadline`, then kills it.
fn wait_until(
    child: &mut std::process::Child,
    pid: libc::pid_t,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
) -> Result<(libc::c_int, libc::rusage), ChildFailure> {
    loop {
        if let Some(done) = wait4(pid, libc::WNOHANG) {
            return Ok(done);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let peak = current_rss(pid);
            let _ = child.kill();
            let cpu = wait4(pid, 0).map_or(Duration::ZERO, |(_, usage)| cpu_time(&usage));
            return Err(ChildFailure::TimedOut {
                after: timeout.unwrap_or_default(),
                cpu,
                peak,
            });
        }
        thread::sleep(POLL);
    }
}

/// What a compiler child that ended with `status` after `usage` produced.
fn outcome(
    (status, usage): (libc::c_int, libc::rusage),
    code: Vec<u8>,
    stderr: String,
    started: Instant,
) -> Result<Vec<u8>, ChildFailure> {
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0).saturating_mul(1024);
    tracing::debug!(elapsed = ?started.elapsed(), peak, "compiled a WASM module in a child");
    match status {
        s if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0 => {
            if code.len() as u64 > MAX_ARTIFACT {
                return Err(ChildFailure::Broken(format!("more than {MAX_ARTIFACT} bytes of code")));
            }
            Ok(code)
        }
        s if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 1 => Err(ChildFailure::Invalid(stderr)),
        s if libc::WIFSIGNALED(s) => Err(ChildFailure::Killed {
            signal: libc::WTERMSIG(s),
            peak,
            stderr,
        }),
        s => Err(ChildFailure::Broken(format!(
            "{} {}",
            std::process::ExitStatus::from_raw(s),
            stderr
        ))),
    }
}

fn cpu_time(usage: &libc::rusage) -> Duration {
    let micros =
        |t: libc::timeval| u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0);
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

fn read_capped(from: impl Read, cap: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = from.take(cap);
    let _ = from.read_to_end(&mut out);
    // Drain the rest so the child never blocks on a full pipe.
    let _ = io::copy(&mut from.into_inner(), &mut io::sink());
    out
}

/// `wait4`: the child's status and resource usage once it has ended.
fn wait4(pid: libc::pid_t, flags: libc::c_int) -> Option<(libc::c_int, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        match r {
            r if r == pid => return Some((status, usage)),
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return None,
        }
    }
}

/// A running process's resident memory, from `/proc` (0 if unknown).
fn current_rss(pid: libc::pid_t) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_settings_round_trip_and_anything_else_is_refused() {
        for (interruptible, fuel) in [(true, false), (false, true), (true, true), (false, false)] {
            let config = EngineConfig {
                interruptible,
                fuel,
                ..EngineConfig::default()
            };
            let back = parse_settings(&settings_arg(config)).unwrap();
            assert_eq!((back.interruptible, back.fuel), (interruptible, fuel));
            assert!(!back.pooling);
        }
        for bad in ["", "fuel", "fuel=2", "interruptible=1,x=0", "fuel=1;rm"] {
            assert!(parse_settings(bad).is_none(), "{bad}");
        }
    }
}
