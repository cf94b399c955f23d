//! libvirt's hook sequences, so a driver gets them right by calling one method.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::{libvirt_event_spec, DaemonEvent, Driver, HookEvent, RawEvent, Registry, ReleaseReason, Report};

/// A guest (or network) as the hooks see it: driver, name and XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// A domain driver (qemu, lxc, libxl, bhyve) or network.
    pub driver: Driver,
    /// Its name, the hooks' first argument.
    pub name: String,
    /// Its XML, the hooks' stdin.
    pub xml: String,
}

impl Guest {
    /// A guest.
    pub fn new(driver: Driver, name: impl Into<String>, xml: impl Into<String>) -> Self {
        Guest {
            driver,
            name: name.into(),
            xml: xml.into(),
        }
    }
}

/// A whole sequence libvirt runs for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Scenario {
    /// prepare → start → started, with stopped + `release failed` cleanup on failure.
    Start,
    /// stopped → release.
    Stop,
    /// restore (filter) → start sequence.
    Restore,
    /// migrate (filter) → start sequence, on the destination.
    MigrateIn,
    /// stopped → `release migrated`, on the source.
    MigrateOut,
    /// reconnect at daemon start; a failure kills the guest.
    Reconnect,
    /// `daemon - start - start`, then reconnect for each running guest.
    DaemonStart,
    /// `daemon - reload begin SIGHUP`, then the presence cache is refreshed.
    DaemonReload,
    /// `daemon - shutdown - shutdown`.
    DaemonShutdown,
}

impl Scenario {
    /// The name `hookctl simulate` uses (daemon scenarios are `start`, `reload`, `shutdown`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Scenario::Start | Scenario::DaemonStart => "start",
            Scenario::Stop => "stop",
            Scenario::Restore => "restore",
            Scenario::MigrateIn => "migrate-in",
            Scenario::MigrateOut => "migrate-out",
            Scenario::Reconnect => "reconnect",
            Scenario::DaemonReload => "reload",
            Scenario::DaemonShutdown => "shutdown",
        }
    }

    /// Parses a scenario name for a driver.
    ///
    /// # Errors
    /// A message listing the scenarios the driver has.
    pub fn parse_for(driver: Driver, name: &str) -> Result<Scenario, String> {
        let all: &[Scenario] = if driver == Driver::Daemon {
            &[Scenario::DaemonStart, Scenario::DaemonReload, Scenario::DaemonShutdown]
        } else {
            &[
                Scenario::Start,
                Scenario::Stop,
                Scenario::Restore,
                Scenario::MigrateIn,
                Scenario::MigrateOut,
                Scenario::Reconnect,
            ]
        };
        all.iter().copied().find(|s| s.as_str() == name).ok_or_else(|| {
            let names: Vec<_> = all.iter().map(|s| s.as_str()).collect();
            format!(
                "unknown scenario `{name}` for {driver}, expected one of {}",
                names.join(", ")
            )
        })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::parse_for(Driver::Qemu, s)
    }
}

/// How one step of a sequence went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepResult {
    /// Every hook succeeded.
    Ok,
    /// A hook failed and libvirt ignores it (or reports it without rollback).
    FailureIgnored,
    /// A hook failed and the operation stops here.
    Fatal,
}

/// One event of a sequence.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What the hooks did.
    pub report: Report,
    /// How it went.
    pub result: StepResult,
    /// Whether the driver ran it to clean up after a failure.
    pub cleanup: bool,
}

/// The end of a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The operation goes through.
    Proceed,
    /// The operation is refused (the guest does not start, the restore fails, ...).
    Aborted {
        /// libvirt's message for the failure.
        message: String,
    },
    /// The guest is killed (a failed reconnect).
    Killed {
        /// libvirt's message for the failure.
        message: String,
    },
}

/// A whole sequence's record.
#[derive(Debug, Clone, Serialize)]
pub struct Sequence {
    /// What was run.
    pub scenario: Scenario,
    /// Each event, in order.
    pub steps: Vec<Step>,
    /// What libvirt would do.
    pub verdict: Verdict,
    /// For restore/migrate-in: the XML the guest starts with (after filters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
}

impl Sequence {
    /// Whether the operation goes through.
    pub fn proceeds(&self) -> bool {
        self.verdict == Verdict::Proceed
    }
}

/// The sequence asked for does not exist for this driver (lxc has no restore, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{driver} has no `{op}` hook, so it cannot run the `{scenario}` sequence")]
pub struct UnsupportedScenario {
    /// The driver.
    pub driver: Driver,
    /// The scenario.
    pub scenario: Scenario,
    /// The missing event.
    pub op: &'static str,
}

/// Runs libvirt's sequences against a registry.
///
/// ```
/// use std::sync::Arc;
/// use hooks_core::{Driver, Guest, Lifecycle, RegistryBuilder, HookOutcome, testing::RecordingHook};
/// let rec = Arc::new(RecordingHook::new("rec").returning(|| HookOutcome::exited(1)));
/// let registry = RegistryBuilder::new().shared_hook(Some(Driver::Qemu), rec.clone()).build();
/// let guest = Guest::new(Driver::Qemu, "vm", "<domain/>\n");
/// let seq = pollster::block_on(Lifecycle::new(&registry).start(&guest)).unwrap();
/// assert!(!seq.proceeds());
/// assert_eq!(rec.lines(), ["vm prepare begin -", "vm stopped end -", "vm release end failed"]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle<'r> {
    registry: &'r Registry,
    release_reasons: bool,
}

/// What a driver does between hook events (allocate, launch, ...); an error aborts the
/// start and triggers the cleanup hooks, as a failing hook would.
pub type DriverAction<'a> = dyn FnMut(&str) -> Result<(), String> + Send + 'a;

impl<'r> Lifecycle<'r> {
    /// Sequences over this registry.
    pub fn new(registry: &'r Registry) -> Self {
        Lifecycle {
            registry,
            release_reasons: true,
        }
    }

    /// Whether qemu's `release` passes its reason (`destroyed`, `failed`, ...) as the
    /// extra argument, as libvirt does since 10.5; `false` passes `-`, as older libvirt
    /// does. By default `true`.
    pub fn release_reasons(mut self, pass: bool) -> Self {
        self.release_reasons = pass;
        self
    }

    /// Runs a scenario by name: what `hookctl simulate` does.
    ///
    /// # Errors
    /// When the driver has no such sequence.
    pub async fn run(
        &self,
        scenario: Scenario,
        guest: &Guest,
        reason: ReleaseReason,
    ) -> Result<Sequence, UnsupportedScenario> {
        match scenario {
            Scenario::Start => self.start(guest).await,
            Scenario::Stop => self.stop(guest, reason).await,
            Scenario::Restore => self.restore(guest).await,
            Scenario::MigrateIn => self.migrate_in(guest).await,
            Scenario::MigrateOut => self.migrate_out(guest).await,
            Scenario::Reconnect => self.reconnect(guest).await,
            Scenario::DaemonStart => Ok(self.daemon_start(&[]).await),
            Scenario::DaemonReload => Ok(self.daemon_reload().await),
            Scenario::DaemonShutdown => Ok(self.daemon_shutdown().await),
        }
    }

    /// Start: prepare → start → started; on a failure, stopped and `release failed`.
    ///
    /// # Errors
    /// When the driver has no start sequence (daemon).
    pub async fn start(&self, guest: &Guest) -> Result<Sequence, UnsupportedScenario> {
        self.start_with(guest, &mut |_| Ok(())).await
    }

    /// Start, calling `act(op)` after each successful step so the driver does its own
    /// work in between (allocate after prepare, launch after start).
    ///
    /// # Errors
    /// When the driver has no start sequence.
    pub async fn start_with(&self, guest: &Guest, act: &mut DriverAction<'_>) -> Result<Sequence, UnsupportedScenario> {
        let mut seq = Sequence::new(Scenario::Start);
        self.start_steps(&mut seq, guest, &guest.xml, act).await?;
        Ok(seq)
    }

    /// Stop: stopped → release with `reason` (drivers other than qemu pass `-`).
    ///
    /// # Errors
    /// When the driver has no stop sequence.
    pub async fn stop(&self, guest: &Guest, reason: ReleaseReason) -> Result<Sequence, UnsupportedScenario> {
        let mut seq = Sequence::new(Scenario::Stop);
        self.stop_steps(&mut seq, guest, reason, false).await?;
        Ok(seq)
    }

    /// Restore: restore (may rewrite the XML) → start with the resulting XML. A failing
    /// restore hook aborts with no cleanup hooks.
    ///
    /// # Errors
    /// When the driver has no restore hook (only qemu has).
    pub async fn restore(&self, guest: &Guest) -> Result<Sequence, UnsupportedScenario> {
        self.filter_then_start(Scenario::Restore, "restore", guest).await
    }

    /// Incoming migration: migrate (may rewrite the XML) → start with the result.
    ///
    /// # Errors
    /// When the driver has no migrate hook (qemu and libxl have).
    pub async fn migrate_in(&self, guest: &Guest) -> Result<Sequence, UnsupportedScenario> {
        self.filter_then_start(Scenario::MigrateIn, "migrate", guest).await
    }

    /// Outgoing migration, on the source: stopped → `release migrated`.
    ///
    /// # Errors
    /// When the driver has no stop sequence.
    pub async fn migrate_out(&self, guest: &Guest) -> Result<Sequence, UnsupportedScenario> {
        let mut seq = Sequence::new(Scenario::MigrateOut);
        self.stop_steps(&mut seq, guest, ReleaseReason::Migrated, false).await?;
        Ok(seq)
    }

    /// Reconnect to a running guest; a failure kills it (with the stop hooks).
    ///
    /// # Errors
    /// When the driver has no reconnect hook (bhyve, network).
    pub async fn reconnect(&self, guest: &Guest) -> Result<Sequence, UnsupportedScenario> {
        let mut seq = Sequence::new(Scenario::Reconnect);
        let event = event(guest, Scenario::Reconnect, "reconnect", "-", &guest.xml)?;
        if let Some(message) = seq.step(self.registry, &event, false).await {
            seq.verdict = Verdict::Killed { message };
            self.stop_steps(&mut seq, guest, ReleaseReason::Failed, true).await?;
        }
        Ok(seq)
    }

    /// Daemon start, then a reconnect for each running guest (each failure kills that
    /// guest only; the verdict reports the last one killed).
    pub async fn daemon_start(&self, running: &[Guest]) -> Sequence {
        let mut seq = Sequence::new(Scenario::DaemonStart);
        seq.step(self.registry, &DaemonEvent::Start, false).await;
        for guest in running {
            if let Ok(mut sub) = self.reconnect(guest).await {
                seq.steps.append(&mut sub.steps);
                if sub.verdict != Verdict::Proceed {
                    seq.verdict = sub.verdict;
                }
            }
        }
        seq
    }

    /// Daemon reload (SIGHUP): the reload hook, then the registry re-reads which
    /// drivers have hooks.
    pub async fn daemon_reload(&self) -> Sequence {
        let mut seq = Sequence::new(Scenario::DaemonReload);
        seq.step(self.registry, &DaemonEvent::Reload, false).await;
        self.registry.reload();
        seq
    }

    /// Daemon shutdown.
    pub async fn daemon_shutdown(&self) -> Sequence {
        let mut seq = Sequence::new(Scenario::DaemonShutdown);
        seq.step(self.registry, &DaemonEvent::Shutdown, false).await;
        seq
    }

    async fn filter_then_start(
        &self,
        scenario: Scenario,
        op: &'static str,
        guest: &Guest,
    ) -> Result<Sequence, UnsupportedScenario> {
        let mut seq = Sequence::new(scenario);
        // Fails before anything runs when the driver has no such filter event.
        let filter = event(guest, scenario, op, "-", &guest.xml)?;
        if let Some(message) = seq.step(self.registry, &filter, false).await {
            seq.verdict = Verdict::Aborted { message };
            return Ok(seq);
        }
        let report = &seq.steps[seq.steps.len() - 1].report;
        let xml = report
            .document
            .as_deref()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_else(|| guest.xml.clone());
        let started = Guest {
            xml: xml.clone(),
            ..guest.clone()
        };
        self.start_steps(&mut seq, &started, &xml, &mut |_| Ok(())).await?;
        seq.xml = Some(xml);
        Ok(seq)
    }

    async fn start_steps(
        &self,
        seq: &mut Sequence,
        guest: &Guest,
        xml: &str,
        act: &mut DriverAction<'_>,
    ) -> Result<(), UnsupportedScenario> {
        // Networks have no `prepare`: their start is `start` then `started`.
        let ops: &[&'static str] = if guest.driver == Driver::Network {
            &["start", "started"]
        } else {
            &["prepare", "start", "started"]
        };
        let events = ops
            .iter()
            .map(|op| event(guest, seq.scenario, op, "-", xml))
            .collect::<Result<Vec<_>, _>>()?;
        for ev in &events {
            let failure = match seq.step(self.registry, ev, false).await {
                Some(message) => Some(message),
                None => act(ev.op())
                    .err()
                    .map(|why| format!("driver failed after `{}`: {why}", ev.op())),
            };
            if let Some(message) = failure {
                seq.verdict = Verdict::Aborted { message };
                let cleanup = Guest {
                    xml: xml.to_owned(),
                    ..guest.clone()
                };
                return self.stop_steps(seq, &cleanup, ReleaseReason::Failed, true).await;
            }
        }
        Ok(())
    }

    async fn stop_steps(
        &self,
        seq: &mut Sequence,
        guest: &Guest,
        reason: ReleaseReason,
        cleanup: bool,
    ) -> Result<(), UnsupportedScenario> {
        let extra = if guest.driver == Driver::Qemu && self.release_reasons {
            reason.as_str()
        } else {
            "-"
        };
        let stopped = event(guest, seq.scenario, "stopped", "-", &guest.xml)?;
        // `release` does not exist for networks; their stop is `stopped` alone.
        let release = event(guest, seq.scenario, "release", extra, &guest.xml).ok();
        seq.step(self.registry, &stopped, cleanup).await;
        if let Some(release) = release {
            seq.step(self.registry, &release, cleanup).await;
        }
        Ok(())
    }
}

impl Sequence {
    fn new(scenario: Scenario) -> Self {
        Sequence {
            scenario,
            steps: Vec::new(),
            verdict: Verdict::Proceed,
            xml: None,
        }
    }

    /// Fires one event and records it; returns libvirt's message if it was fatal.
    async fn step(&mut self, registry: &Registry, event: &dyn HookEvent, cleanup: bool) -> Option<String> {
        let (report, result, fatal) = match registry.fire(event).await {
            Ok(report) => (report, StepResult::Ok, None),
            Err(failure) if failure.is_fatal() && !cleanup => {
                let message = failure.to_string();
                (failure.into_report(), StepResult::Fatal, Some(message))
            }
            Err(failure) => (failure.into_report(), StepResult::FailureIgnored, None),
        };
        self.steps.push(Step {
            report,
            result,
            cleanup,
        });
        fatal
    }
}

fn event(
    guest: &Guest,
    scenario: Scenario,
    op: &'static str,
    extra: &str,
    xml: &str,
) -> Result<RawEvent, UnsupportedScenario> {
    let spec = libvirt_event_spec(guest.driver, op).ok_or(UnsupportedScenario {
        driver: guest.driver,
        scenario,
        op,
    })?;
    Ok(
        RawEvent::new(guest.driver, [guest.name.as_str(), op, spec.subop, extra])
            .with_input(Some(xml.as_bytes().to_vec())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MockHook, RecordingHook};
    use crate::{HookOutcome, RegistryBuilder};
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

    fn run(f: impl std::future::Future<Output = Result<Sequence, UnsupportedScenario>>) -> Sequence {
        pollster::block_on(f).unwrap()
    }

    #[test]
    fn start_runs_three_steps() {
        let (r, rec) = setup(None);
        let seq = run(Lifecycle::new(&r).start(&qemu()));
        assert!(seq.proceeds());
        assert_eq!(
            rec.lines(),
            ["vm prepare begin -", "vm start begin -", "vm started begin -"]
        );
    }

    #[test]
    fn each_start_failure_cleans_up() {
        for (op, ran) in [("prepare", 1), ("start", 2), ("started", 3)] {
            let (r, rec) = setup(Some(op));
            let seq = run(Lifecycle::new(&r).start(&qemu()));
            assert!(matches!(seq.verdict, Verdict::Aborted { .. }), "{op}");
            let lines = rec.lines();
            assert_eq!(lines.len(), ran + 2);
            assert_eq!(&lines[ran..], ["vm stopped end -", "vm release end failed"]);
            assert!(seq.steps[ran..].iter().all(|s| s.cleanup));
        }
    }

    #[test]
    fn a_failing_driver_action_cleans_up_too() {
        let (r, rec) = setup(None);
        let seq = pollster::block_on(Lifecycle::new(&r).start_with(&qemu(), &mut |op| {
            if op == "start" {
                Err("qemu died".into())
            } else {
                Ok(())
            }
        }))
        .unwrap();
        assert_eq!(
            seq.verdict,
            Verdict::Aborted {
                message: "driver failed after `start`: qemu died".into()
            }
        );
        assert_eq!(rec.lines().last().unwrap(), "vm release end failed");
    }

    #[test]
    fn stop_failures_are_ignored() {
        let (r, rec) = setup(Some("stopped"));
        let seq = run(Lifecycle::new(&r).stop(&qemu(), ReleaseReason::Destroyed));
        assert!(seq.proceeds());
        assert_eq!(seq.steps[0].result, StepResult::FailureIgnored);
        assert_eq!(rec.lines(), ["vm stopped end -", "vm release end destroyed"]);
    }

    #[test]
    fn lxc_release_passes_no_reason() {
        let (r, rec) = setup(None);
        run(Lifecycle::new(&r).stop(&Guest::new(Driver::Lxc, "ct", "<domain/>\n"), ReleaseReason::Destroyed));
        assert_eq!(rec.lines(), ["ct stopped end -", "ct release end -"]);
    }

    #[test]
    fn restore_failure_has_no_cleanup() {
        let (r, rec) = setup(Some("restore"));
        let seq = run(Lifecycle::new(&r).restore(&qemu()));
        assert!(!seq.proceeds());
        assert_eq!(rec.lines(), ["vm restore begin -"]);
    }

    #[test]
    fn migrate_in_starts_with_the_filtered_xml() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let r = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                MockHook::always("rw", || HookOutcome::success().with_stdout("<new/>\n"))
                    .matching(|e| e.op() == "migrate"),
            )
            .shared_hook(None, rec.clone())
            .build();
        let seq = run(Lifecycle::new(&r).migrate_in(&qemu()));
        assert_eq!(seq.xml.as_deref(), Some("<new/>\n"));
        let calls = rec.calls();
        assert_eq!(
            calls[0].input.as_deref(),
            Some(&b"<new/>\n"[..]),
            "chained into the next migrate hook"
        );
        assert_eq!(calls[1].args[1], "prepare");
        assert_eq!(calls[1].input.as_deref(), Some(&b"<new/>\n"[..]));
    }

    #[test]
    fn unsupported_sequences_run_nothing() {
        let (r, rec) = setup(None);
        let err = pollster::block_on(Lifecycle::new(&r).restore(&Guest::new(Driver::Lxc, "ct", ""))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lxc has no `restore` hook, so it cannot run the `restore` sequence"
        );
        assert!(rec.lines().is_empty());
    }

    #[test]
    fn reconnect_failure_kills_the_guest() {
        let (r, rec) = setup(Some("reconnect"));
        let seq = pollster::block_on(Lifecycle::new(&r).daemon_start(&[qemu()]));
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
    }

    #[test]
    fn network_start_is_start_then_started_and_cleans_up_with_stopped() {
        let (r, rec) = setup(None);
        let net = Guest::new(Driver::Network, "default", "<hookData/>");
        assert!(run(Lifecycle::new(&r).start(&net)).proceeds());
        assert_eq!(rec.lines(), ["default start begin -", "default started begin -"]);
        let rec = Arc::new(RecordingHook::new("rec"));
        let r = RegistryBuilder::new()
            .shared_hook(None, rec.clone())
            .hook(
                Driver::Network,
                MockHook::always("no", || HookOutcome::exited(1)).matching(|e| e.op() == "started"),
            )
            .build();
        assert!(!run(Lifecycle::new(&r).start(&net)).proceeds());
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
        run(Lifecycle::new(&r).stop(
            &Guest::new(Driver::Network, "default", "<hookData/>"),
            ReleaseReason::Unspecified,
        ));
        assert_eq!(rec.lines(), ["default stopped end -"]);
    }
}
