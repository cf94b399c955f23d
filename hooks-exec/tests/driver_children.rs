//! Hooks beside a driver's own children, seen from the embedder's side: a driver that
//! runs its guests' VMMs as child processes (`sleep` stands for them), before and while
//! its hooks run, fires events through a `Registry` built from its own hooks dir
//! (`<dir>/qemu.d/`, the embedder's layout) with a per-hook timeout. A hook that hangs
//! after leaving a background child (`&`) and a daemon (`setsid` and a double fork) is
//! timed out, and when `fire` returns:
//!
//! - no process of the hook's is alive (every one carries a marker in its environment,
//!   so none can hide from the check), and
//! - every VMM of the driver's still runs and is still the driver's to reap: none was
//!   killed, none was reaped by the library (a VMM that exited meanwhile gives the
//!   driver its own exit status), and the driver has no child it did not start but the
//!   crate's watchdog (no zombie of the hook's left to it).
//!
//! Each test runs in a fresh copy of this binary (its children are then exactly the
//! driver's), under both containments: a cgroup of the hook's own (skipped, saying why,
//! where this process cannot make one: not root, no cgroup v2) and the per-hook
//! subreaper, which a driver gets by giving its hooks dir an exec loader with
//! `ExecOptions::cgroup` false. The `*_subreaper_driver` test's copy is itself a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`), as drivers that adopt their VMMs' orphans are:
//! the "one driver's hook timeout can kill another guest's VMM".

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_hooks_core::backend::{HookLoader, HookSettings};
use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::outcome::Containment;
use virt_hooks_core::report::StatusRecord;
use virt_hooks_core::{Hook, HookFailure, HooksDir, LoadError, Registry, RegistryBuilder};
use virt_hooks_exec::{ExecHook, ExecOptions};

/// Set in the copy of this binary that runs one test's body: the test's name.
const IN_COPY: &str = "HOOKS_EXEC_TEST_DRIVER_COPY";
/// Set (to anything) when that copy is to be a child subreaper.
const AS_SUBREAPER: &str = "HOOKS_EXEC_TEST_DRIVER_SUBREAPER";

/// Long enough for the hook to start its escapees on a loaded machine; it then hangs
/// until this kills it.
const HOOK_TIMEOUT: Duration = Duration::from_millis(1500);

/// Runs `body` in a fresh copy of this test binary, a child subreaper if `subreaper`.
fn in_own_process(test: &str, subreaper: bool, body: impl FnOnce()) {
    if std::env::var_os(IN_COPY).is_some_and(|v| v == test) {
        if std::env::var_os(AS_SUBREAPER).is_some() {
            virt_hooks_exec::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
        }
        body();
        return;
    }
    let mut copy = Command::new(std::env::current_exe().unwrap());
    copy.args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(IN_COPY, test);
    if subreaper {
        copy.env(AS_SUBREAPER, "1");
    }
    let out = copy.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What the copy printed (skips included) shows in this test's output too.
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process:\n{stdout}\n{stderr}"
    );
}

/// The exec loader a driver that wants the per-hook subreaper gives its hooks dir: the
/// crate's own, with `cgroup: false`.
struct SubreaperOnly;

impl HookLoader for SubreaperOnly {
    fn backend(&self) -> &'static str {
        "exec"
    }

    fn priority(&self) -> i32 {
        100
    }

    fn claims(&self, path: &Path, meta: &fs::Metadata) -> bool {
        virt_hooks_exec::ExecLoader.claims(path, meta)
    }

    fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
        let options = ExecOptions {
            timeout: settings.effective_timeout(None),
            cgroup: false,
            ..ExecOptions::default()
        };
        Ok(Arc::new(ExecHook::with_options(path, options)))
    }
}

/// The containments a test runs under: `true` is a cgroup of the hook's own.
const CONTAINMENTS: [bool; 2] = [true, false];

/// Whether this process gives hooks cgroups; if not, says so (that half is skipped).
fn cgroups_here(test: &str) -> bool {
    let c = virt_hooks_exec::containment();
    if c.kind != Containment::Cgroup {
        eprintln!("SKIPPED {test} with cgroups: hooks get no cgroup here ({c})");
        return false;
    }
    true
}

/// The driver's hooks dir, in the embedder's layout: `<dir>/qemu.d/10-escape-and-hang`.
/// For guest `hang` the hook marks itself (it execs itself again with `HOOK_MARK=mark`
/// in its environment, which everything it starts inherits), leaves a background
/// `sleep` and a background subshell with a child (in its process group) and a daemon
/// (a new session, then a double fork: an orphan before the timeout), notes in
/// `<dir>/ready` that they all run, and hangs. For guest `no` it refuses (status 3), for
/// any other it says yes at once.
fn hooks_dir(dir: &Path, mark: &str) -> PathBuf {
    let hooks = dir.join("hooks");
    let drop_ins = hooks.join("qemu.d");
    fs::create_dir_all(&drop_ins).unwrap();
    let d = dir.display();
    let hook = drop_ins.join("10-escape-and-hang");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\n\
             case \"$1\" in hang) ;; no) echo \"not $1\" >&2; exit 3 ;; *) exit 0 ;; esac\n\
             [ -n \"$HOOK_MARK\" ] || exec env HOOK_MARK={mark} \"$0\" \"$@\"\n\
             sleep 300 </dev/null >/dev/null 2>&1 &\n\
             (sleep 300; :) </dev/null >/dev/null 2>&1 &\n\
             setsid sh -c 'sh -c \"echo \\$\\$ > {d}/daemon.tmp; mv {d}/daemon.tmp {d}/daemon; exec sleep 300\" &' </dev/null >/dev/null 2>&1\n\
             while [ ! -s {d}/daemon ]; do sleep 0.01; done\n\
             touch {d}/ready\n\
             sleep 300\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    hooks
}

/// The driver's registry: its hooks dir, with the crate's exec loader (a cgroup per
/// hook where one can be made) or the subreaper-only one, and a per-hook timeout.
fn registry(hooks: &Path, cgroup: bool) -> Registry {
    virt_hooks_exec::link();
    let dir = if cgroup {
        HooksDir::new(hooks)
    } else {
        HooksDir::new(hooks).with_loader(SubreaperOnly)
    };
    RegistryBuilder::new()
        .hooks_dir_with(dir)
        .timeout(Some(HOOK_TIMEOUT))
        .build()
}

fn prepare(guest: &str) -> QemuEvent {
    QemuEvent::Prepare {
        name: guest.into(),
        xml: format!("<domain><name>{guest}</name></domain>\n"),
    }
}

/// Waits for a file the hook makes; false after 10 s (the hook never got there).
fn wait_for(file: &Path) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// The fields of `/proc/<pid>/stat` after the command name: state first.
fn stat_after_comm(pid: libc::pid_t) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.trim_start().to_owned())
}

/// Has a /proc entry that is not a zombie.
fn running(pid: libc::pid_t) -> bool {
    stat_after_comm(pid).is_some_and(|s| !s.starts_with('Z'))
}

/// The live (not zombie) processes whose environment holds `HOOK_MARK=<mark>`: every
/// process the hook started, however it detached, and the hook itself.
fn marked(mark: &str) -> Vec<libc::pid_t> {
    let needle = format!("HOOK_MARK={mark}");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .filter(|&pid| running(pid))
        .collect()
}

/// SIGKILL to whatever still carries `mark`, whatever the test's outcome: a hook the
/// test expected dead must not outlive it.
struct KillMarked(String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for pid in marked(&self.0) {
            // SAFETY: kill takes no pointers; the pid carried this test's marker just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// This process's children (those of every thread), zombies included.
fn my_children() -> BTreeSet<libc::pid_t> {
    let mut pids = BTreeSet::new();
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            pids.extend(list.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()));
        }
    }
    pids
}

fn comm(pid: libc::pid_t) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

/// The driver's guests: VMMs that run until it stops them, and VMMs that exit by
/// themselves with a status only the driver may collect.
#[derive(Default)]
struct Vmms {
    running: Vec<(String, Child)>,
    exiting: Vec<(String, Child, i32)>,
}

impl Vmms {
    fn start(&mut self, guest: &str) {
        let child = Command::new("sleep")
            .arg("300")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a VMM");
        self.running.push((guest.to_owned(), child));
    }

    /// A VMM that exits at once with `code`: its zombie waits for the driver.
    fn start_exiting(&mut self, guest: &str, code: i32) {
        let child = Command::new("sh")
            .args(["-c", &format!("exit {code}")])
            .spawn()
            .expect("spawn a VMM");
        self.exiting.push((guest.to_owned(), child, code));
    }

    fn pids(&self) -> BTreeSet<libc::pid_t> {
        let running = self.running.iter().map(|(_, c)| c.id());
        let exiting = self.exiting.iter().map(|(_, c, _)| c.id());
        running.chain(exiting).map(|p| p as libc::pid_t).collect()
    }

    /// Every VMM is untouched: the running ones still run and are still ours to reap,
    /// and each one that exited gives us its own status.
    fn check_untouched(&mut self, containment: &str) {
        for (guest, child) in &mut self.running {
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => panic!(
                    "{containment}: the VMM of {guest} ({}) was killed ({status})",
                    child.id()
                ),
                Err(e) => panic!(
                    "{containment}: the VMM of {guest} ({}) was reaped by someone else: {e}",
                    child.id()
                ),
            }
        }
        for (guest, child, code) in &mut self.exiting {
            let status = child.wait().unwrap_or_else(|e| {
                panic!(
                    "{containment}: the VMM of {guest} ({}) that exited was reaped by someone else: {e}",
                    child.id()
                )
            });
            assert_eq!(
                status.code(),
                Some(*code),
                "{containment}: the VMM of {guest} ended otherwise than by itself: {status:?} (signal {:?})",
                status.signal()
            );
        }
    }
}

/// Whatever the test's outcome: a VMM left running would hold the test's output open.
impl Drop for Vmms {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, child, _) in &mut self.exiting {
            let _ = child.wait();
        }
    }
}

/// The driver has no child it did not start but the crate's watchdog: no hook process,
/// helper or zombie of the hook's was left to it.
fn check_no_foreign_children(vmms: &Vmms, containment: &str) {
    let ours = vmms.pids();
    let foreign: Vec<String> = my_children()
        .difference(&ours)
        .filter(|&&pid| comm(pid) != "hooks-watchdog")
        .map(|&pid| {
            format!(
                "{pid} ({}, state {:?})",
                comm(pid),
                stat_after_comm(pid).and_then(|s| s.chars().next())
            )
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "{containment}: the driver was left children it did not start: {foreign:?}"
    );
}

/// What the hook that hung did, from the event's failure: it timed out, contained as
/// `want`.
fn check_timed_out(failure: &HookFailure, want: Containment) {
    let hook = failure.failed_hook();
    assert!(
        matches!(hook.status, StatusRecord::TimedOut { .. }),
        "the hook was not timed out: {:?} {failure}",
        hook.status
    );
    assert_eq!(hook.containment, Some(want), "{:?}", hook.warnings);
}

/// The containment a driver asked for: a cgroup, or the per-hook subreaper.
fn asked(cgroup: bool) -> Containment {
    if cgroup {
        Containment::Cgroup
    } else {
        Containment::Subreaper
    }
}

/// The check is not empty: the hook, its background sleep and its daemon carried the
/// mark when the hook was ready.
fn check_seen(seen: &[libc::pid_t], dir: &Path, containment: &str) {
    let daemon: libc::pid_t = fs::read_to_string(dir.join("daemon")).unwrap().trim().parse().unwrap();
    assert!(
        seen.len() >= 3 && seen.contains(&daemon),
        "{containment}: the hook's processes were {seen:?} (its daemon {daemon})"
    );
}

/// One event of the driver's whose hook hangs and times out, while the driver starts
/// and loses VMMs of its own, fired from a plain thread (`fire_blocking`).
fn hanging_hook_beside_vmms(test: &str, cgroup: bool) {
    let containment = if cgroup { "cgroup" } else { "subreaper" };
    let tmp = tempfile::tempdir().unwrap();
    let mark = format!("{test}-{containment}-{}", std::process::id());
    let _cleanup = KillMarked(mark.clone());
    let registry = registry(&hooks_dir(tmp.path(), &mark), cgroup);
    let mut vmms = Vmms::default();
    // Guests that ran before the event.
    vmms.start("before");
    vmms.start_exiting("before-exits", 9);

    let (seen, result) = std::thread::scope(|s| {
        let during = s.spawn(|| {
            // Once the hook and its escapees run: another guest's start goes through
            // its hooks and its VMM starts, and a VMM exits, while the hook hangs.
            assert!(wait_for(&tmp.path().join("ready")), "the hook never got going");
            let seen = marked(&mark);
            registry
                .fire_blocking(&prepare("other"))
                .expect("the other guest's hooks say yes");
            let mut started = Vmms::default();
            started.start("other");
            started.start_exiting("during-exits", 7);
            (seen, started)
        });
        let result = registry.fire_blocking(&prepare("hang"));
        let (seen, mut started) = during.join().unwrap();
        vmms.running.append(&mut started.running);
        vmms.exiting.append(&mut started.exiting);
        (seen, result)
    });

    check_seen(&seen, tmp.path(), containment);
    let failure = result.expect_err("a hook that times out refuses the start");
    check_timed_out(&failure, asked(cgroup));
    let left = marked(&mark);
    assert!(
        left.is_empty(),
        "{containment}: processes of the hook outlived the call: {left:?} (of {seen:?})"
    );
    check_no_foreign_children(&vmms, containment);
    vmms.check_untouched(containment);
}

/// A driver that is no subreaper: the hook's daemon went to init, and still dies with
/// the hook; the VMMs started before and during the hook live on.
#[test]
fn a_hooks_timeout_kills_all_of_the_hook_and_none_of_the_drivers_vmms() {
    hanging_hook_under_each_containment(
        "a_hooks_timeout_kills_all_of_the_hook_and_none_of_the_drivers_vmms",
        false,
    );
}

/// A driver that is a child subreaper: the hook's orphans came to it, and the VMM of
/// another guest started while the hook hung is its child as they are. The timeout
/// kills the orphans and reaps them, and leaves every VMM running or to be reaped by
/// the driver.
#[test]
fn a_hooks_timeout_spares_the_vmms_of_a_subreaper_driver() {
    hanging_hook_under_each_containment("a_hooks_timeout_spares_the_vmms_of_a_subreaper_driver", true);
}

/// [`hanging_hook_beside_vmms`] in a cgroup (where there are cgroups here) and under the
/// helper, in a process of the test's own (a child subreaper when `subreaper`).
fn hanging_hook_under_each_containment(test: &str, subreaper: bool) {
    in_own_process(test, subreaper, || {
        for cgroup in CONTAINMENTS {
            if cgroup && !cgroups_here(test) {
                continue;
            }
            hanging_hook_beside_vmms(test, cgroup);
        }
    });
}

/// An async driver: its VMMs are `tokio::process` children (tokio reaps them from its
/// own SIGCHLD handler), two guests' events run at once on the runtime, and the second
/// guest's VMM starts while the first one's hook hangs.
#[test]
fn an_async_driver_keeps_its_tokio_children_through_a_hooks_timeout() {
    let test = "an_async_driver_keeps_its_tokio_children_through_a_hooks_timeout";
    in_own_process(test, true, || {
        for cgroup in CONTAINMENTS {
            if cgroup && !cgroups_here(test) {
                continue;
            }
            let containment = if cgroup { "cgroup" } else { "subreaper" };
            let tmp = tempfile::tempdir().unwrap();
            let mark = format!("{test}-{containment}-{}", std::process::id());
            let _cleanup = KillMarked(mark.clone());
            let registry = registry(&hooks_dir(tmp.path(), &mark), cgroup);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let vmm = || {
                    tokio::process::Command::new("sleep")
                        .arg("300")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                };
                let mut before = vmm().expect("spawn a VMM");
                let mut exits = tokio::process::Command::new("sh")
                    .args(["-c", "exit 7"])
                    .spawn()
                    .unwrap();
                let ready = tmp.path().join("ready");
                let other = async {
                    while !ready.exists() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let seen = marked(&mark);
                    let event = prepare("other");
                    registry.fire(&event).await.expect("the other guest's hooks say yes");
                    (seen, vmm().expect("spawn a VMM"))
                };
                let hang = prepare("hang");
                let (result, (seen, mut during)) = tokio::join!(registry.fire(&hang), other);
                check_seen(&seen, tmp.path(), containment);
                check_timed_out(
                    &result.expect_err("a hook that times out refuses the start"),
                    asked(cgroup),
                );
                let left = marked(&mark);
                assert!(
                    left.is_empty(),
                    "{containment}: processes of the hook outlived the call: {left:?} (of {seen:?})"
                );
                for (guest, child) in [("before", &mut before), ("during", &mut during)] {
                    match child.try_wait() {
                        Ok(None) => {}
                        other => panic!("{containment}: the VMM of {guest} is not running: {other:?}"),
                    }
                }
                let status = exits.wait().await.expect("the driver reaps its own VMM");
                assert_eq!(status.code(), Some(7), "{containment}: {status:?}");
                let foreign: Vec<String> = my_children()
                    .into_iter()
                    .filter(|&p| ![before.id(), during.id()].contains(&Some(p as u32)))
                    .filter(|&p| comm(p) != "hooks-watchdog")
                    .map(|p| format!("{p} ({})", comm(p)))
                    .collect();
                assert!(
                    foreign.is_empty(),
                    "{containment}: children the driver did not start: {foreign:?}"
                );
                let _ = before.kill().await;
                let _ = during.kill().await;
            });
        }
    });
}

/// The hook's verdicts for a guest it accepts, one it refuses and one it hangs on: each
/// comes through, and nothing of the hung one is left.
fn verdicts_come_through(test: &str, cgroup: bool, want: Containment) {
    let containment = if cgroup { "cgroup" } else { "subreaper" };
    let tmp = tempfile::tempdir().unwrap();
    let mark = format!("{test}-{containment}-{}", std::process::id());
    let _cleanup = KillMarked(mark.clone());
    let registry = registry(&hooks_dir(tmp.path(), &mark), cgroup);
    for _ in 0..5 {
        let report = registry
            .fire_blocking(&prepare("yes"))
            .unwrap_or_else(|e| panic!("{containment}: a hook that said yes failed the event: {e}"));
        assert_eq!(
            report.hooks[0].status,
            StatusRecord::Exited { code: 0 },
            "{containment}"
        );
        let refused = registry.fire_blocking(&prepare("no")).expect_err("refused");
        let hook = refused.failed_hook();
        assert_eq!(
            hook.status,
            StatusRecord::Exited { code: 3 },
            "{containment}: {refused}"
        );
        assert_eq!(hook.stderr, "not no\n", "{containment}");
    }
    let failure = registry.fire_blocking(&prepare("hang")).expect_err("timed out");
    check_timed_out(&failure, want);
    let left = marked(&mark);
    assert!(
        left.is_empty(),
        "{containment}: processes of the hook outlived the call: {left:?}"
    );
}

/// A driver that ignores SIGCHLD (`SIG_IGN`, as C daemons often do to never have zombies)
/// has the kernel reap its children the moment they exit: a hook that is its child (in
/// a cgroup) would leave no exit status to read. Its hooks run under the per-hook
/// subreaper instead (the helper is the hook's parent, and reads it), so every verdict
/// still comes through and a timeout still takes everything.
#[test]
fn a_driver_that_ignores_sigchld_still_gets_its_hooks_verdicts() {
    let test = "a_driver_that_ignores_sigchld_still_gets_its_hooks_verdicts";
    in_own_process(test, false, || {
        // SAFETY: sets a signal disposition; this copy of the binary runs this test alone.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        let c = virt_hooks_exec::containment();
        assert_eq!(c.kind, Containment::Subreaper, "{c}");
        assert!(c.description.contains("ignores SIGCHLD"), "{c}");
        let seen = virt_hooks_exec::containment_of(std::process::id()).unwrap();
        assert_eq!((seen.kind, seen.description), (c.kind, c.description));
        for cgroup in CONTAINMENTS {
            verdicts_come_through(test, cgroup, Containment::Subreaper);
        }
    });
}

/// A driver that reaps any child that exits (a thread blocked in `waitpid(-1)`, as a
/// hand-written SIGCHLD handler does) can take a hook's exit status when the hook is its
/// child (in a cgroup): the event then fails with a message saying what happened, never
/// with a verdict the hook did not give. Under the per-hook subreaper it takes nothing
/// that matters (only the helper, once the helper has said how the hook ended).
#[test]
fn a_driver_that_reaps_any_child_is_told_what_it_did() {
    let test = "a_driver_that_reaps_any_child_is_told_what_it_did";
    in_own_process(test, false, || {
        for cgroup in CONTAINMENTS {
            if cgroup && !cgroups_here(test) {
                continue;
            }
            let containment = if cgroup { "cgroup" } else { "subreaper" };
            let tmp = tempfile::tempdir().unwrap();
            let mark = format!("{test}-{containment}-{}", std::process::id());
            let registry = registry(&hooks_dir(tmp.path(), &mark), cgroup);
            // A child of its own keeps the reaper blocked rather than spinning on ECHILD.
            let mut keeper = Vmms::default();
            keeper.start("keeper");
            let stop = std::sync::atomic::AtomicBool::new(false);
            // Nothing in the scope panics: the reaper must be stopped whatever happens.
            let (failures, reaped) = std::thread::scope(|s| {
                let reaper = s.spawn(|| {
                    let mut reaped = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let mut status = 0;
                        // SAFETY: waits for any child; `status` is a live local.
                        if unsafe { libc::waitpid(-1, &mut status, 0) } > 0 {
                            reaped += 1;
                        }
                    }
                    reaped
                });
                let failures: Vec<HookFailure> = (0..20)
                    .filter_map(|_| registry.fire_blocking(&prepare("yes")).err())
                    .collect();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                // Wakes the reaper: a child that exits at once.
                let _ = Command::new("true").spawn();
                (failures, reaper.join().unwrap())
            });
            eprintln!(
                "{test} ({containment}): {} of 20 calls lost the hook's status; the driver reaped {reaped} children",
                failures.len()
            );
            for failure in &failures {
                let message = failure.failed_hook().message.clone().unwrap_or_default();
                assert!(
                    message.contains("another part of this program reaped the hook's process"),
                    "{containment}: {failure}"
                );
            }
            let stolen = failures.len();
            let ok = 20 - stolen;
            if cgroup {
                assert!(
                    stolen > 0,
                    "the driver's waitpid(-1) never won the race ({ok} went through)"
                );
            } else {
                assert_eq!(stolen, 0, "under the subreaper the hook is the helper's child");
            }
        }
    });
}
