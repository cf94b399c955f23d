//! A toy hypervisor driver: it runs each guest as a stand-in VMM process (`sleep`), and
//! calls hooks exactly where a real driver calls libvirt's, through
//! [`virt_hooks_core::Lifecycle`]. Its own work (allocate, launch, release) is a
//! [`DriverActions`] implementation, so a start refused at `started` kills the guest it
//! launched. Its tests swap the exec backend for `MockHook`/`RecordingHook`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::process::{Child, Command};
use virt_hooks_core::events::{DaemonEvent, ReleaseReason};
use virt_hooks_core::lifecycle::{Sequence, UnsupportedScenario};
use virt_hooks_core::{
    compiled_hook, Driver, DriverActions, Guest, Hook, HookFailure, HookOutcome, Invocation, Lifecycle, LifecycleError,
    Phase, Registry, Report,
};

/// A hook compiled into the driver binary: an in-memory audit trail of every qemu and
/// daemon hook event, picked up by `RegistryBuilder::compiled_hooks()`.
#[derive(Debug, Default)]
pub struct AuditTrail;

static AUDIT: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl AuditTrail {
    /// Every event seen so far, as `driver object op subop extra`.
    pub fn entries() -> Vec<String> {
        AUDIT.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Hook for AuditTrail {
    fn name(&self) -> &str {
        "mini-driver/audit-trail"
    }

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        let args: Vec<_> = inv.args().iter().map(|a| a.to_string_lossy()).collect();
        AUDIT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{} {}", inv.driver(), args.join(" ")));
        HookOutcome::success()
    }
}

// Runs before anything from the hooks dir (order -100), for qemu and daemon events.
compiled_hook!(name: "mini-driver/audit-trail", drivers: [Qemu, Daemon], order: -100, hook: AuditTrail);

/// A guest's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Defined, not running.
    Off,
    /// Being started (its hooks are running): a second start is refused.
    Starting,
    /// Running.
    Running,
}

#[derive(Debug)]
struct Domain {
    xml: String,
    state: State,
    vmm: Option<Child>,
}

/// What the driver refuses to do.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No such guest.
    #[error("no guest named `{0}`")]
    NoSuchGuest(String),
    /// The guest is in the wrong state.
    #[error("guest `{0}` is {1}")]
    WrongState(String, &'static str),
    /// A hook refused (libvirt's message names it, its status and its stderr).
    #[error(transparent)]
    Hook(#[from] HookFailure),
    /// The driver's own work failed.
    #[error("cannot launch the guest's VMM")]
    Launch(#[source] std::io::Error),
    /// The driver cannot run this sequence.
    #[error(transparent)]
    Unsupported(#[from] UnsupportedScenario),
    /// The operation was cancelled before it finished.
    #[error("cancelled after {0} hook event(s)")]
    Cancelled(usize),
}

impl From<LifecycleError<std::io::Error>> for DriverError {
    fn from(e: LifecycleError<std::io::Error>) -> Self {
        match e {
            LifecycleError::Refused { failure, .. } | LifecycleError::Killed { failure, .. } => failure.into(),
            LifecycleError::Driver { error, .. } => DriverError::Launch(error),
            LifecycleError::Unsupported(u) => u.into(),
            other => DriverError::Cancelled(other.sequence().map_or(0, |s| s.steps.len())),
        }
    }
}

/// The driver: guests in memory, hooks from a registry.
#[derive(Debug)]
pub struct MiniDriver {
    hooks: Registry,
    guests: Mutex<BTreeMap<String, Domain>>,
    /// The stand-in VMM: a program and its arguments (by default `sleep 3600`).
    vmm: Vec<String>,
    /// What the driver itself did, in order (so tests can see hooks and work interleave).
    pub actions: Mutex<Vec<String>>,
}

/// Puts a guest that did not finish starting back to off (a refusal, an error, a
/// dropped start).
struct ResetOnDrop<'d> {
    driver: &'d MiniDriver,
    name: &'d str,
}

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            self.driver.set_state(self.name, State::Off);
        }
    }
}

/// The driver's own work between hook events, for one guest.
struct GuestWork<'d> {
    driver: &'d MiniDriver,
    name: String,
    vmm: Option<Child>,
}

impl GuestWork<'_> {
    fn log(&self, what: String) {
        self.driver.actions.lock().unwrap().push(what);
    }
}

#[async_trait]
impl DriverActions for GuestWork<'_> {
    type Error = std::io::Error;

    async fn after(&mut self, phase: Phase, guest: &Guest) -> Result<(), std::io::Error> {
        match phase {
            Phase::Prepare => self.log(format!("allocate resources for {}", self.name)),
            Phase::Start => {
                let (program, args) = self.driver.vmm.split_first().expect("a VMM command");
                // Dropped with this future if the start is cancelled: no stray VMM.
                let child = Command::new(program).args(args).kill_on_drop(true).spawn()?;
                let bridge = guest.xml.lines().find(|l| l.contains("bridge=")).unwrap_or("").trim();
                self.log(format!("launch {} {bridge}", self.name).trim_end().to_owned());
                self.vmm = Some(child);
            }
            Phase::Release => self.log(format!("release resources of {}", self.name)),
            _ => {}
        }
        Ok(())
    }

    async fn undo(&mut self, done: &[Phase], _guest: &Guest) {
        if let Some(mut vmm) = self.vmm.take() {
            let _ = vmm.kill().await;
            self.log(format!("kill {}", self.name));
        }
        if done.contains(&Phase::Prepare) {
            self.log(format!("release resources of {}", self.name));
        }
    }
}

impl MiniDriver {
    /// A driver calling these hooks.
    pub fn new(hooks: Registry) -> Self {
        Self::with_vmm(hooks, ["sleep", "3600"])
    }

    /// A driver that launches `vmm` (program and arguments) for each guest.
    pub fn with_vmm<S: Into<String>>(hooks: Registry, vmm: impl IntoIterator<Item = S>) -> Self {
        let vmm: Vec<String> = vmm.into_iter().map(Into::into).collect();
        assert!(!vmm.is_empty(), "a VMM command");
        MiniDriver {
            hooks,
            guests: Mutex::default(),
            vmm,
            actions: Mutex::default(),
        }
    }

    /// Defines a guest (no hook: libvirt calls none for define).
    pub fn define(&self, name: &str, xml: &str) {
        let domain = Domain {
            xml: xml.to_owned(),
            state: State::Off,
            vmm: None,
        };
        self.guests.lock().unwrap().insert(name.to_owned(), domain);
    }

    /// A guest's state.
    pub fn state(&self, name: &str) -> Option<State> {
        self.guests.lock().unwrap().get(name).map(|d| d.state)
    }

    /// A guest's current XML.
    pub fn xml(&self, name: &str) -> Option<String> {
        self.guests.lock().unwrap().get(name).map(|d| d.xml.clone())
    }

    /// The process id of a running guest's VMM.
    pub fn vmm_pid(&self, name: &str) -> Option<u32> {
        self.guests.lock().unwrap().get(name)?.vmm.as_ref()?.id()
    }

    /// The guest if it is in state `want`, moved to `then` in the same step (so two
    /// starts cannot both pass the check).
    fn take(&self, name: &str, want: State, then: State) -> Result<Guest, DriverError> {
        let mut guests = self.guests.lock().unwrap();
        let d = guests
            .get_mut(name)
            .ok_or_else(|| DriverError::NoSuchGuest(name.to_owned()))?;
        if d.state != want {
            let is = match d.state {
                State::Running => "running",
                State::Starting => "starting",
                State::Off => "not running",
            };
            return Err(DriverError::WrongState(name.to_owned(), is));
        }
        d.state = then;
        Ok(Guest::new(Driver::Qemu, name, d.xml.clone()))
    }

    fn set_state(&self, name: &str, state: State) {
        if let Some(d) = self.guests.lock().unwrap().get_mut(name) {
            d.state = state;
        }
    }

    fn work(&self, name: &str) -> GuestWork<'_> {
        GuestWork {
            driver: self,
            name: name.to_owned(),
            vmm: None,
        }
    }

    fn set_running(&self, name: &str, vmm: Option<Child>, xml: Option<String>) {
        if let Some(d) = self.guests.lock().unwrap().get_mut(name) {
            d.state = State::Running;
            d.vmm = vmm;
            if let Some(xml) = xml {
                d.xml = xml;
            }
        }
    }

    /// Starts a guest: prepare → (allocate) → start → (launch) → started. A refusal at
    /// any step leaves it off, with what was done undone.
    ///
    /// # Errors
    /// When a hook refuses, the VMM cannot be launched, or the guest is not off.
    pub async fn start(&self, name: &str) -> Result<Sequence, DriverError> {
        let guest = self.take(name, State::Off, State::Starting)?;
        // Back to off unless it started, also if this future is dropped mid-start.
        let mut reset = ResetOnDrop { driver: self, name };
        let mut work = self.work(name);
        let seq = Lifecycle::new(&self.hooks).start_with(&guest, &mut work).await?;
        self.set_running(name, work.vmm.take(), None);
        reset.name = "";
        Ok(seq)
    }

    /// Destroys a running guest: kill → stopped → (release) → release destroyed. libvirt
    /// ignores these hooks' failures; they are in the sequence.
    ///
    /// # Errors
    /// When the guest is not running.
    pub async fn destroy(&self, name: &str) -> Result<Sequence, DriverError> {
        let guest = self.take(name, State::Running, State::Off)?;
        let vmm = self.guests.lock().unwrap().get_mut(name).and_then(|d| d.vmm.take());
        if let Some(mut vmm) = vmm {
            let _ = vmm.kill().await;
        }
        self.actions.lock().unwrap().push(format!("kill {name}"));
        let seq = Lifecycle::new(&self.hooks)
            .stop_with(&guest, ReleaseReason::Destroyed, &mut self.work(name))
            .await?;
        for failure in seq.ignored_failures() {
            eprintln!("warning: {}", failure.message.as_deref().unwrap_or(&failure.name));
        }
        Ok(seq)
    }

    /// Accepts an incoming migration: migrate (hooks may rewrite the XML) → start, and
    /// launches the guest with the rewritten XML.
    ///
    /// # Errors
    /// When a hook refuses, or a guest of that name is here already.
    pub async fn migrate_in(&self, name: &str, xml: &str) -> Result<Sequence, DriverError> {
        {
            // An incoming guest must not replace one that is here already.
            let mut guests = self.guests.lock().unwrap();
            if guests.get(name).is_some_and(|d| d.state != State::Off) {
                return Err(DriverError::WrongState(name.to_owned(), "already here"));
            }
            let domain = Domain {
                xml: xml.to_owned(),
                state: State::Starting,
                vmm: None,
            };
            guests.insert(name.to_owned(), domain);
        }
        let guest = Guest::new(Driver::Qemu, name, xml);
        let mut reset = ResetOnDrop { driver: self, name };
        let mut work = self.work(name);
        let seq = Lifecycle::new(&self.hooks).migrate_in_with(&guest, &mut work).await?;
        self.set_running(name, work.vmm.take(), seq.xml.clone());
        reset.name = "";
        Ok(seq)
    }

    /// The daemon shuts down: its hook's failure is ignored by libvirt, so `?` passes it
    /// by and the report shows it.
    ///
    /// # Errors
    /// Never for this event (its policy ignores failures); kept for the pattern.
    pub async fn shutdown(&self) -> Result<Report, DriverError> {
        let report = self.hooks.fire(&DaemonEvent::Shutdown).await?;
        if let Some(failed) = report.failed_hook() {
            eprintln!("warning: {}", failed.message.as_deref().unwrap_or(&failed.name));
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use virt_hooks_core::report::StatusRecord;
    use virt_hooks_core::testing::{MockHook, RecordingHook};
    use virt_hooks_core::{HookOutcome, RegistryBuilder};

    fn driver(extra: Option<virt_hooks_core::HookEntry>) -> (MiniDriver, Arc<RecordingHook>) {
        let rec = Arc::new(RecordingHook::new("rec"));
        let mut b = RegistryBuilder::new().shared_hook(Some(Driver::Qemu), rec.clone());
        if let Some(h) = extra {
            b = b.hook(Driver::Qemu, h);
        }
        let d = MiniDriver::new(b.build());
        d.define("vm", "<domain><name>vm</name></domain>\n");
        (d, rec)
    }

    /// Whether a process is gone (or a zombie nobody has reaped yet).
    fn is_gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    async fn wait_gone(pid: u32) -> bool {
        for _ in 0..100 {
            if is_gone(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn the_compiled_in_audit_trail_sees_every_event() {
        let d = MiniDriver::new(RegistryBuilder::new().compiled_hooks().build());
        d.define("audited", "<domain/>\n");
        d.start("audited").await.unwrap();
        let trail = AuditTrail::entries();
        assert!(trail.contains(&"qemu audited prepare begin -".to_owned()), "{trail:?}");
        assert!(trail.contains(&"qemu audited started begin -".to_owned()), "{trail:?}");
        d.destroy("audited").await.unwrap();
    }

    #[tokio::test]
    async fn start_calls_hooks_around_the_drivers_own_work() {
        let (d, rec) = driver(None);
        d.start("vm").await.unwrap();
        assert_eq!(d.state("vm"), Some(State::Running));
        assert!(d.vmm_pid("vm").is_some_and(|pid| !is_gone(pid)));
        assert_eq!(
            rec.lines(),
            ["vm prepare begin -", "vm start begin -", "vm started begin -"]
        );
        assert_eq!(*d.actions.lock().unwrap(), ["allocate resources for vm", "launch vm"]);
        let pid = d.vmm_pid("vm").unwrap();
        d.destroy("vm").await.unwrap();
        assert!(wait_gone(pid).await);
    }

    #[tokio::test]
    async fn a_fatal_refusal_keeps_the_guest_off_and_names_the_hook() {
        let refuse = MockHook::always("policy", || HookOutcome::exited(1).with_stderr("not on fridays"))
            .matching(|e| e.op() == "prepare");
        let (d, rec) = driver(Some(refuse));
        let err = d.start("vm").await.unwrap_err();
        let DriverError::Hook(failure) = &err else {
            panic!("{err}")
        };
        assert_eq!(failure.failed_hook().name, "policy");
        assert!(err.to_string().ends_with("not on fridays"), "{err}");
        assert_eq!(d.state("vm"), Some(State::Off));
        assert_eq!(
            rec.lines(),
            ["vm prepare begin -", "vm stopped end -", "vm release end failed"]
        );
        assert!(
            d.actions.lock().unwrap().is_empty(),
            "nothing allocated after a refused prepare"
        );
    }

    #[tokio::test]
    async fn a_refusal_at_started_kills_the_launched_guest() {
        let refuse = MockHook::always("late-policy", || HookOutcome::exited(1)).matching(|e| e.op() == "started");
        let (d, _) = driver(Some(refuse));
        assert!(matches!(d.start("vm").await, Err(DriverError::Hook(_))));
        assert_eq!(d.state("vm"), Some(State::Off));
        assert_eq!(
            *d.actions.lock().unwrap(),
            [
                "allocate resources for vm",
                "launch vm",
                "kill vm",
                "release resources of vm"
            ]
        );
    }

    #[tokio::test]
    async fn a_vmm_that_cannot_launch_is_the_drivers_own_error() {
        let d = MiniDriver::with_vmm(RegistryBuilder::new().build(), ["/nonexistent/vmm"]);
        d.define("vm", "<domain/>\n");
        let err = d.start("vm").await.unwrap_err();
        let DriverError::Launch(io) = &err else { panic!("{err}") };
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            *d.actions.lock().unwrap(),
            ["allocate resources for vm", "release resources of vm"]
        );
    }

    #[tokio::test]
    async fn ignored_failures_do_not_stop_a_destroy_or_a_shutdown() {
        let failing = MockHook::always("broken", || HookOutcome::exited(2)).matching(|e| e.op() == "stopped");
        let (d, _) = driver(Some(failing));
        d.start("vm").await.unwrap();
        let seq = d.destroy("vm").await.unwrap();
        assert_eq!(d.state("vm"), Some(State::Off));
        let ignored: Vec<_> = seq.ignored_failures().map(|r| r.name.as_str()).collect();
        assert_eq!(ignored, ["broken"]);

        let d = MiniDriver::new(
            RegistryBuilder::new()
                .hook(Driver::Daemon, MockHook::always("flaky", || HookOutcome::exited(1)))
                .build(),
        );
        let report = d.shutdown().await.expect("libvirt ignores daemon hook failures");
        assert!(!report.succeeded());
    }

    #[tokio::test]
    async fn a_custom_hook_that_hangs_is_stopped_by_the_registry_timeout() {
        let hangs = MockHook::from_fn("hangs", |_| std::future::pending()).matching(|e| e.op() == "prepare");
        let d = MiniDriver::new(
            RegistryBuilder::new()
                .hook(Driver::Qemu, hangs)
                .timeout(Some(Duration::from_millis(100)))
                .build(),
        );
        d.define("vm", "<domain/>\n");
        let started = std::time::Instant::now();
        let err = d.start("vm").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let DriverError::Hook(failure) = &err else {
            panic!("{err}")
        };
        assert_eq!(failure.failed_hook().status, StatusRecord::TimedOut { after_ms: 100 });
        assert_eq!(d.state("vm"), Some(State::Off));
    }

    #[tokio::test]
    async fn a_cancelled_start_kills_the_hook_process_and_the_launched_guest() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let script = tmp.path().join("slow-started");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho $$ > {}\nexec sleep 1000\n", pidfile.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let slow = virt_hooks_exec::ExecHook::new(&script);
        let recorder = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .shared_hook(Some(Driver::Qemu), recorder.clone())
            .shared_hook(
                Some(Driver::Qemu),
                Arc::new(MockHook::from_fn("gate", move |inv| {
                    let slow = slow.clone();
                    async move {
                        if inv.op() == "started" {
                            slow.call(&inv).await
                        } else {
                            HookOutcome::success()
                        }
                    }
                })),
            )
            .build();
        let d = MiniDriver::new(registry);
        d.define("vm", "<domain/>\n");
        let cancelled = tokio::time::timeout(Duration::from_millis(300), d.start("vm")).await;
        assert!(cancelled.is_err(), "the start was still waiting for its `started` hook");
        let hook_pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(
            wait_gone(hook_pid).await,
            "the hook's process {hook_pid} was not killed"
        );
        // The VMM launched after `start` was dropped with the sequence (kill_on_drop),
        // and what a dropped sequence leaves undone is documented: no cleanup hooks.
        assert_eq!(d.state("vm"), Some(State::Off));
        assert_eq!(recorder.lines().last().unwrap(), "vm started begin -");
    }

    #[tokio::test]
    async fn a_guest_cannot_be_started_twice_or_replaced_by_a_migration() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = Arc::clone(&gate);
        let waits = MockHook::from_fn("waits", move |_| {
            let g = Arc::clone(&g);
            async move {
                g.notified().await;
                HookOutcome::success()
            }
        })
        .matching(|e| e.op() == "prepare");
        let (d, _) = driver(Some(waits));
        let d = Arc::new(d);
        let first = tokio::spawn({
            let d = Arc::clone(&d);
            async move { d.start("vm").await.map(|_| ()) }
        });
        while d.state("vm") != Some(State::Starting) {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            d.start("vm").await,
            Err(DriverError::WrongState(_, "starting"))
        ));
        gate.notify_one();
        first.await.unwrap().unwrap();
        assert_eq!(d.state("vm"), Some(State::Running));
        let pid = d.vmm_pid("vm").unwrap();
        let err = d.migrate_in("vm", "<domain/>\n").await.unwrap_err();
        assert!(matches!(err, DriverError::WrongState(_, "already here")), "{err}");
        assert_eq!(d.vmm_pid("vm"), Some(pid), "the running guest is untouched");
        d.destroy("vm").await.unwrap();
    }

    #[tokio::test]
    async fn migrate_in_launches_with_the_rewritten_xml() {
        let rewrite = MockHook::from_fn("rw", |inv| async move {
            let xml = String::from_utf8_lossy(inv.input().unwrap_or_default()).replace("br-old", "br0");
            HookOutcome::success().with_stdout(xml)
        })
        .matching(|e| e.op() == "migrate");
        let (d, _) = driver(Some(rewrite));
        d.migrate_in(
            "vm2",
            "<domain><name>vm2</name>\n<interface bridge='br-old'/>\n</domain>\n",
        )
        .await
        .unwrap();
        assert_eq!(
            d.xml("vm2").unwrap(),
            "<domain><name>vm2</name>\n<interface bridge='br0'/>\n</domain>\n"
        );
        assert_eq!(d.state("vm2"), Some(State::Running));
        assert!(
            d.actions
                .lock()
                .unwrap()
                .contains(&"launch vm2 <interface bridge='br0'/>".to_owned()),
            "{:?}",
            d.actions.lock().unwrap()
        );
        d.destroy("vm2").await.unwrap();
    }
}
