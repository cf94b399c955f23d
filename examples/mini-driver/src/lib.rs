//! A toy hypervisor driver: it "runs" guests in memory, and calls hooks exactly where a
//! real driver calls libvirt's, through [`hooks_core::Lifecycle`]. Its tests swap the
//! exec backend for `MockHook`/`RecordingHook`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use hooks_core::{
    compiled_hook, Driver, Guest, Hook, HookOutcome, Invocation, Lifecycle, Registry, ReleaseReason, Sequence, Verdict,
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
    /// Running.
    Running,
}

#[derive(Debug, Clone)]
struct Domain {
    xml: String,
    state: State,
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
    /// A hook refused (libvirt's message).
    #[error("{0}")]
    Refused(String),
    /// The driver cannot run this sequence.
    #[error(transparent)]
    Unsupported(#[from] hooks_core::UnsupportedScenario),
}

/// The driver: guests in memory, hooks from a registry.
#[derive(Debug)]
pub struct MiniDriver {
    hooks: Registry,
    guests: Mutex<BTreeMap<String, Domain>>,
    /// What the driver itself did, in order (so tests can see hooks and work interleave).
    pub actions: Mutex<Vec<String>>,
}

impl MiniDriver {
    /// A driver calling these hooks.
    pub fn new(hooks: Registry) -> Self {
        MiniDriver {
            hooks,
            guests: Mutex::default(),
            actions: Mutex::default(),
        }
    }

    /// Defines a guest (no hook: libvirt calls none for define).
    pub fn define(&self, name: &str, xml: &str) {
        let domain = Domain {
            xml: xml.to_owned(),
            state: State::Off,
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

    fn guest(&self, name: &str, want: State) -> Result<Guest, DriverError> {
        let guests = self.guests.lock().unwrap();
        let d = guests
            .get(name)
            .ok_or_else(|| DriverError::NoSuchGuest(name.to_owned()))?;
        if d.state != want {
            let is = if d.state == State::Running {
                "running"
            } else {
                "not running"
            };
            return Err(DriverError::WrongState(name.to_owned(), is));
        }
        Ok(Guest::new(Driver::Qemu, name, d.xml.clone()))
    }

    fn set(&self, name: &str, state: State, xml: Option<String>) {
        if let Some(d) = self.guests.lock().unwrap().get_mut(name) {
            d.state = state;
            if let Some(xml) = xml {
                d.xml = xml;
            }
        }
    }

    fn finish(&self, name: &str, seq: Sequence, on_success: State) -> Result<Sequence, DriverError> {
        match &seq.verdict {
            Verdict::Proceed => {
                self.set(name, on_success, seq.xml.clone());
                Ok(seq)
            }
            Verdict::Aborted { message } | Verdict::Killed { message } => {
                self.set(name, State::Off, None);
                Err(DriverError::Refused(message.clone()))
            }
        }
    }

    /// Starts a guest: prepare → (allocate) → start → (launch) → started.
    ///
    /// # Errors
    /// When a hook refuses, or the guest is not off.
    pub async fn start(&self, name: &str) -> Result<Sequence, DriverError> {
        let guest = self.guest(name, State::Off)?;
        let mut act = |op: &str| {
            let work = match op {
                "prepare" => "allocate resources",
                "start" => "launch the guest",
                _ => return Ok(()),
            };
            self.actions.lock().unwrap().push(format!("{work} for {name}"));
            Ok(())
        };
        let seq = Lifecycle::new(&self.hooks).start_with(&guest, &mut act).await?;
        self.finish(name, seq, State::Running)
    }

    /// Destroys a running guest: stopped → release destroyed (hook failures ignored).
    ///
    /// # Errors
    /// When the guest is not running.
    pub async fn destroy(&self, name: &str) -> Result<Sequence, DriverError> {
        let guest = self.guest(name, State::Running)?;
        self.actions.lock().unwrap().push(format!("kill {name}"));
        let seq = Lifecycle::new(&self.hooks)
            .stop(&guest, ReleaseReason::Destroyed)
            .await?;
        self.finish(name, seq, State::Off)
    }

    /// Accepts an incoming migration: migrate (hooks may rewrite the XML) → start.
    ///
    /// # Errors
    /// When a hook refuses.
    pub async fn migrate_in(&self, name: &str, xml: &str) -> Result<Sequence, DriverError> {
        self.define(name, xml);
        let guest = self.guest(name, State::Off)?;
        let seq = Lifecycle::new(&self.hooks).migrate_in(&guest).await?;
        self.finish(name, seq, State::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hooks_core::testing::{MockHook, RecordingHook};
    use hooks_core::{HookOutcome, RegistryBuilder};
    use std::sync::Arc;

    fn driver(extra: Option<MockHook>) -> (MiniDriver, Arc<RecordingHook>) {
        let rec = Arc::new(RecordingHook::new("rec"));
        let mut b = RegistryBuilder::new().shared_hook(Some(Driver::Qemu), rec.clone());
        if let Some(h) = extra {
            b = b.hook(Driver::Qemu, h);
        }
        let d = MiniDriver::new(b.build());
        d.define("vm", "<domain><name>vm</name></domain>\n");
        (d, rec)
    }

    #[tokio::test]
    async fn the_compiled_in_audit_trail_sees_every_event() {
        let d = MiniDriver::new(RegistryBuilder::new().compiled_hooks().build());
        d.define("audited", "<domain/>\n");
        d.start("audited").await.unwrap();
        let trail = AuditTrail::entries();
        assert!(trail.contains(&"qemu audited prepare begin -".to_owned()), "{trail:?}");
        assert!(trail.contains(&"qemu audited started begin -".to_owned()), "{trail:?}");
    }

    #[tokio::test]
    async fn start_calls_hooks_around_the_drivers_own_work() {
        let (d, rec) = driver(None);
        d.start("vm").await.unwrap();
        assert_eq!(d.state("vm"), Some(State::Running));
        assert_eq!(
            rec.lines(),
            ["vm prepare begin -", "vm start begin -", "vm started begin -"]
        );
        assert_eq!(
            *d.actions.lock().unwrap(),
            ["allocate resources for vm", "launch the guest for vm"]
        );
    }

    #[tokio::test]
    async fn a_refusing_hook_keeps_the_guest_off() {
        let refuse = MockHook::always("policy", || HookOutcome::exited(1).with_stderr("not on fridays"))
            .matching(|e| e.op() == "prepare");
        let (d, rec) = driver(Some(refuse));
        let err = d.start("vm").await.unwrap_err();
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
    async fn destroy_ignores_hook_failures() {
        let failing = MockHook::always("broken", || HookOutcome::exited(2)).matching(|e| e.op() == "stopped");
        let (d, _) = driver(Some(failing));
        d.start("vm").await.unwrap();
        d.destroy("vm").await.unwrap();
        assert_eq!(d.state("vm"), Some(State::Off));
    }

    #[tokio::test]
    async fn migrate_in_adopts_the_rewritten_xml() {
        let rewrite = MockHook::always("rw", || {
            HookOutcome::success().with_stdout("<domain><name>vm2</name><new/></domain>\n")
        })
        .matching(|e| e.op() == "migrate");
        let (d, _) = driver(Some(rewrite));
        d.migrate_in("vm2", "<domain><name>vm2</name></domain>\n")
            .await
            .unwrap();
        assert_eq!(d.xml("vm2").unwrap(), "<domain><name>vm2</name><new/></domain>\n");
        assert_eq!(d.state("vm2"), Some(State::Running));
    }
}
