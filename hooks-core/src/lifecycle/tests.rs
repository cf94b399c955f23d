//! The sequences, run against recording and refusing hooks.

use super::*;
use crate::testing::{MockHook, RecordingHook};
use crate::{block_on, HookOutcome, RegistryBuilder};
use std::sync::Arc;

fn setup(fail_op: Option<&'static str>) -> (Registry, Arc<RecordingHook>) {
    let rec = Arc::new(RecordingHook::new("rec"));
    let mut b = RegistryBuilder::new().shared_hook(None, rec.clone());
    if let Some(op) = fail_op {
        b = b.hook(
            Driver::Qemu,
            MockHook::always("fails", || HookOutcome::exited(1).with_stderr("no")).matching(move |e| e.op() == op),
        );
    }
    (b.build(), rec)
}

fn qemu() -> Guest {
    Guest::new(Driver::Qemu, "vm", "<domain/>\n")
}

/// Dropping a start future left no record of what ran; a cancelled one stops at
/// once (no cleanup hook, no undo) and says which events ran and which phases the
/// driver had done, so that it can stop the guest itself.
#[test]
fn a_cancelled_start_stops_at_once_and_says_what_ran() {
    let rec = Arc::new(RecordingHook::new("rec"));
    let hangs = MockHook::from_fn("hangs", |_| std::future::pending()).matching(|e| e.op() == "start");
    let r = RegistryBuilder::new()
        .shared_hook(Some(Driver::Qemu), rec.clone())
        .hook(Driver::Qemu, hangs)
        .build();
    let cancel = crate::Cancel::new();
    let canceller = cancel.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        canceller.cancel();
    });
    let mut driver = Recorder::default();
    let err = block_on(Lifecycle::new(&r).cancel_with(&cancel).start_with(&qemu(), &mut driver)).unwrap_err();
    timer.join().unwrap();
    assert!(err.to_string().contains("cancelled after 2 event(s)"), "{err}");
    let LifecycleError::Cancelled { done, sequence } = err else {
        panic!("expected Cancelled: {err}")
    };
    assert_eq!(done, [Phase::Prepare]);
    assert_eq!(driver.log, ["prepare <domain/>"], "no start action, no undo");
    assert_eq!(
        rec.lines(),
        ["vm prepare begin -", "vm start begin -"],
        "no cleanup hooks"
    );
    assert!(sequence.cancelled);
    let stopped = sequence.steps[1].report.hooks.last().unwrap();
    assert_eq!(
        (stopped.name.as_str(), stopped.failure),
        ("hangs", Some(crate::Failure::Cancelled))
    );
    // What the driver does next: stop the guest, giving the plugins that ran their
    // last events.
    let stop = block_on(Lifecycle::new(&r).stop(&qemu(), ReleaseReason::Failed)).unwrap();
    assert_eq!(stop.steps.len(), 2);
}

/// Records what the driver was asked to do; fails after `fail_after`.
#[derive(Default)]
struct Recorder {
    log: Vec<String>,
    fail_after: Option<Phase>,
}

#[derive(Debug, PartialEq)]
struct QemuDied;

impl fmt::Display for QemuDied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("qemu exited with status 1")
    }
}

#[async_trait]
impl DriverActions for Recorder {
    type Error = QemuDied;
    async fn after(&mut self, phase: Phase, guest: &Guest) -> Result<(), QemuDied> {
        self.log.push(format!("{phase} {}", guest.xml.trim()));
        if self.fail_after == Some(phase) {
            return Err(QemuDied);
        }
        Ok(())
    }
    async fn undo(&mut self, done: &[Phase], _guest: &Guest) {
        let done: Vec<_> = done.iter().map(|p| p.op()).collect();
        self.log.push(format!("undo {}", done.join(",")));
    }
}

#[test]
fn start_runs_three_steps() {
    let (r, rec) = setup(None);
    let seq = block_on(Lifecycle::new(&r).start(&qemu())).unwrap();
    assert!(seq.proceeds());
    assert_eq!(
        rec.lines(),
        ["vm prepare begin -", "vm start begin -", "vm started begin -"]
    );
}

#[test]
fn each_refusal_is_an_error_naming_the_hook_and_cleans_up() {
    for (op, ran) in [("prepare", 1), ("start", 2), ("started", 3)] {
        let (r, rec) = setup(Some(op));
        let mut driver = Recorder::default();
        let err = block_on(Lifecycle::new(&r).start_with(&qemu(), &mut driver)).unwrap_err();
        let LifecycleError::Refused { failure, sequence } = &err else {
            panic!("{op}: {err}")
        };
        assert_eq!(failure.failed_hook().name, "fails");
        assert_eq!(failure.failed_hook().stderr, "no");
        assert!(err.to_string().contains("returned status 1: no"), "{err}");
        let lines = rec.lines();
        assert_eq!(lines.len(), ran + 2);
        assert_eq!(&lines[ran..], ["vm stopped end -", "vm release end failed"]);
        assert!(sequence.steps[ran..].iter().all(|s| s.cleanup));
        // The driver's work before the refusal is undone once; none after it ran.
        let done = ["prepare", "start"][..ran - 1].join(",");
        let mut want: Vec<String> = ["prepare", "start"][..ran - 1]
            .iter()
            .map(|p| format!("{p} <domain/>"))
            .collect();
        if ran > 1 {
            want.push(format!("undo {done}"));
        }
        assert_eq!(driver.log, want, "{op}");
    }
}

#[test]
fn a_failing_driver_action_passes_its_error_through_and_cleans_up() {
    let (r, rec) = setup(None);
    let mut driver = Recorder {
        fail_after: Some(Phase::Start),
        ..Recorder::default()
    };
    let err = block_on(Lifecycle::new(&r).start_with(&qemu(), &mut driver)).unwrap_err();
    // The message says what the driver's error was, not only that there was one.
    assert_eq!(
        err.to_string(),
        "the driver's own work after `start` failed: qemu exited with status 1"
    );
    let LifecycleError::Driver { error, phase, sequence } = err else {
        panic!("expected the driver's error")
    };
    assert_eq!((error, phase), (QemuDied, Phase::Start));
    assert_eq!(driver.log, ["prepare <domain/>", "start <domain/>", "undo prepare"]);
    assert_eq!(
        sequence.verdict,
        Verdict::Aborted {
            message: "the driver's own work after `start` failed".into(),
            hook: None
        }
    );
    assert_eq!(rec.lines().last().unwrap(), "vm release end failed");
}

#[test]
fn stop_failures_are_ignored_and_recorded() {
    let (r, rec) = setup(Some("stopped"));
    let seq = block_on(Lifecycle::new(&r).stop(&qemu(), ReleaseReason::Destroyed)).unwrap();
    assert!(seq.proceeds());
    assert_eq!(seq.steps[0].result, StepResult::FailureIgnored);
    assert_eq!(seq.ignored_failures().count(), 1);
    assert_eq!(rec.lines(), ["vm stopped end -", "vm release end destroyed"]);
}

#[test]
fn a_failed_stop_action_still_runs_release_and_its_action() {
    let (r, rec) = setup(None);
    let mut driver = Recorder {
        fail_after: Some(Phase::Stopped),
        ..Recorder::default()
    };
    let err = block_on(Lifecycle::new(&r).stop_with(&qemu(), ReleaseReason::Shutdown, &mut driver)).unwrap_err();
    assert!(matches!(
        err,
        LifecycleError::Driver {
            phase: Phase::Stopped,
            ..
        }
    ));
    assert_eq!(rec.lines(), ["vm stopped end -", "vm release end shutdown"]);
    assert_eq!(driver.log, ["stopped <domain/>", "release <domain/>"]);
}

#[test]
fn lxc_release_passes_no_reason() {
    let (r, rec) = setup(None);
    block_on(Lifecycle::new(&r).stop(&Guest::new(Driver::Lxc, "ct", "<domain/>\n"), ReleaseReason::Destroyed)).unwrap();
    assert_eq!(rec.lines(), ["ct stopped end -", "ct release end -"]);
}

#[test]
fn restore_refusal_has_no_cleanup() {
    let (r, rec) = setup(Some("restore"));
    let err = block_on(Lifecycle::new(&r).restore(&qemu())).unwrap_err();
    assert!(matches!(err, LifecycleError::Refused { .. }));
    assert_eq!(rec.lines(), ["vm restore begin -"]);
}

#[test]
fn migrate_in_hands_the_filtered_xml_to_the_driver_and_the_start() {
    let rec = Arc::new(RecordingHook::new("rec"));
    let r = RegistryBuilder::new()
        .hook(
            Driver::Qemu,
            MockHook::always("rw", || HookOutcome::success().with_stdout("<domain id='new'/>\n"))
                .matching(|e| e.op() == "migrate"),
        )
        .shared_hook(None, rec.clone())
        .build();
    let mut driver = Recorder::default();
    let seq = block_on(Lifecycle::new(&r).migrate_in_with(&qemu(), &mut driver)).unwrap();
    assert_eq!(seq.xml.as_deref(), Some("<domain id='new'/>\n"));
    assert_eq!(
        driver.log,
        [
            "migrate <domain id='new'/>",
            "prepare <domain id='new'/>",
            "start <domain id='new'/>",
            "started <domain id='new'/>"
        ]
    );
    let calls = rec.calls();
    assert_eq!(
        calls[0].input.as_deref(),
        Some(&b"<domain id='new'/>\n"[..]),
        "chained into the next migrate hook"
    );
    assert_eq!(calls[1].args[1], "prepare");
    assert_eq!(calls[1].input.as_deref(), Some(&b"<domain id='new'/>\n"[..]));
}

#[test]
fn unsupported_sequences_run_nothing() {
    let (r, rec) = setup(None);
    let err = block_on(Lifecycle::new(&r).restore(&Guest::new(Driver::Lxc, "ct", ""))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "lxc has no `restore` hook, so it cannot run the `restore` sequence"
    );
    assert!(rec.lines().is_empty());
}

#[test]
fn reconnect_failure_kills_the_guest() {
    let (r, rec) = setup(Some("reconnect"));
    let seq = block_on(Lifecycle::new(&r).daemon_start(&[qemu()]));
    assert!(matches!(seq.verdict, Verdict::Killed { .. }));
    assert_eq!(
        rec.lines(),
        [
            "- start - start",
            "vm reconnect begin -",
            "vm stopped end -",
            "vm release end failed"
        ]
    );
    let mut driver = Recorder::default();
    let err = block_on(Lifecycle::new(&r).reconnect_with(&qemu(), &mut driver)).unwrap_err();
    assert!(matches!(err, LifecycleError::Killed { .. }), "{err}");
    assert_eq!(driver.log, ["undo reconnect"]);
}

#[test]
fn network_start_is_start_then_started_and_cleans_up_with_stopped() {
    let (r, rec) = setup(None);
    let net = Guest::new(Driver::Network, "default", "<hookData/>");
    assert!(block_on(Lifecycle::new(&r).start(&net)).unwrap().proceeds());
    assert_eq!(rec.lines(), ["default start begin -", "default started begin -"]);
    let rec = Arc::new(RecordingHook::new("rec"));
    let r = RegistryBuilder::new()
        .shared_hook(None, rec.clone())
        .hook(
            Driver::Network,
            MockHook::always("no", || HookOutcome::exited(1)).matching(|e| e.op() == "started"),
        )
        .build();
    assert!(block_on(Lifecycle::new(&r).start(&net)).is_err());
    assert_eq!(
        rec.lines(),
        [
            "default start begin -",
            "default started begin -",
            "default stopped end -"
        ]
    );
}

#[test]
fn network_stop_is_stopped_only() {
    let (r, rec) = setup(None);
    block_on(Lifecycle::new(&r).stop(
        &Guest::new(Driver::Network, "default", "<hookData/>"),
        ReleaseReason::Unspecified,
    ))
    .unwrap();
    assert_eq!(rec.lines(), ["default stopped end -"]);
}

mod send_tests {
    use super::*;
    use crate::{QemuEvent, RegistryBuilder};

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn registry_and_lifecycle_futures_can_be_spawned() {
        let registry = RegistryBuilder::new().build();
        let ev = QemuEvent::Start {
            name: "vm".into(),
            xml: String::new(),
        };
        let guest = Guest::new(Driver::Qemu, "vm", "<domain/>");
        assert_send(&registry.fire(&ev));
        let lifecycle = Lifecycle::new(&registry);
        assert_send(&lifecycle.start(&guest));
        let mut actions = NoActions;
        assert_send(&lifecycle.migrate_in_with(&guest, &mut actions));
        assert_send(&lifecycle.daemon_start(&[]));
    }
}
