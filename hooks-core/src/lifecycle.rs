//! libvirt's hook sequences, so a driver gets them right by calling one method.
//!
//! Each sequence returns `Ok(Sequence)` when the operation goes on, with a record of
//! every step (failures libvirt ignores included), and `Err(LifecycleError)` when it
//! does not: a hook refused it ([`LifecycleError::Refused`], naming the hook), a guest
//! must be killed ([`LifecycleError::Killed`]), or the driver's own action failed
//! ([`LifecycleError::Driver`], with the driver's error unchanged). So `?` does the
//! right thing.
//!
//! # Cancellation
//! Dropping a sequence's future stops the hook that is running (see
//! [`Registry::fire`]), and nothing after it runs: not the cleanup hooks (`stopped`,
//! `release failed`) and not [`DriverActions::undo`]. A driver that cancels a start
//! after its guest launched must stop it and run [`Lifecycle::stop`] itself.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::Serialize;

use crate::{
    libvirt_event_spec, DaemonEvent, Driver, HookEvent, HookFailure, RawEvent, Registry, ReleaseReason, Report,
};

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

const GUEST_SCENARIOS: [Scenario; 6] = [
    Scenario::Start,
    Scenario::Stop,
    Scenario::Restore,
    Scenario::MigrateIn,
    Scenario::MigrateOut,
    Scenario::Reconnect,
];
const DAEMON_SCENARIOS: [Scenario; 3] = [Scenario::DaemonStart, Scenario::DaemonReload, Scenario::DaemonShutdown];

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

    /// The scenarios a driver has.
    pub fn all_for(driver: Driver) -> &'static [Scenario] {
        if driver == Driver::Daemon {
            &DAEMON_SCENARIOS
        } else {
            &GUEST_SCENARIOS
        }
    }

    /// Parses a scenario name for a driver.
    ///
    /// # Errors
    /// [`UnknownScenario`], whose message lists the scenarios the driver has.
    pub fn parse_for(driver: Driver, name: &str) -> Result<Scenario, UnknownScenario> {
        Self::all_for(driver)
            .iter()
            .copied()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownScenario {
                driver,
                name: name.to_owned(),
            })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scenario {
    type Err = UnknownScenario;
    /// A guest scenario's name (`start`, `migrate-in`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::parse_for(Driver::Qemu, s)
    }
}

/// A scenario name a driver does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scenario `{name}` for {driver}, expected one of {}", list(Scenario::all_for(*driver)))]
pub struct UnknownScenario {
    /// The driver.
    pub driver: Driver,
    /// The name given.
    pub name: String,
}

fn list(all: &[Scenario]) -> String {
    all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// One hook event of a sequence, by its operation: where a driver does its own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Phase {
    /// `migrate`: the incoming guest's XML, filtered.
    Migrate,
    /// `restore`: the restored guest's XML, filtered.
    Restore,
    /// `prepare`: before resources are allocated.
    Prepare,
    /// `start`: before the guest is launched.
    Start,
    /// `started`: the guest runs.
    Started,
    /// `stopped`: the guest has stopped.
    Stopped,
    /// `release`: its resources are released.
    Release,
    /// `reconnect`: the daemon found it running.
    Reconnect,
}

impl Phase {
    /// The operation, libvirt's second argument.
    pub const fn op(self) -> &'static str {
        match self {
            Phase::Migrate => "migrate",
            Phase::Restore => "restore",
            Phase::Prepare => "prepare",
            Phase::Start => "start",
            Phase::Started => "started",
            Phase::Stopped => "stopped",
            Phase::Release => "release",
            Phase::Reconnect => "reconnect",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op())
    }
}

/// What a driver does between the hook events of a sequence: allocate after `prepare`,
/// launch after `start`, use the filtered XML after `migrate`, ...
///
/// ```
/// use async_trait::async_trait;
/// use virt_hooks_core::{block_on, Driver, DriverActions, Guest, Lifecycle, LifecycleError, Phase, RegistryBuilder};
///
/// #[derive(Default)]
/// struct Launch { pid: Option<u32> }
///
/// #[async_trait]
/// impl DriverActions for Launch {
///     type Error = std::io::Error;
///     async fn after(&mut self, phase: Phase, guest: &Guest) -> Result<(), Self::Error> {
///         if phase == Phase::Start {
///             self.pid = Some(4242); // spawn the VMM with guest.xml here
///         }
///         Ok(())
///     }
///     async fn undo(&mut self, _done: &[Phase], _guest: &Guest) {
///         if let Some(_pid) = self.pid.take() { /* kill it */ }
///     }
/// }
///
/// let registry = RegistryBuilder::new().build();
/// let guest = Guest::new(Driver::Qemu, "web1", "<domain/>\n");
/// let mut launch = Launch::default();
/// let seq = block_on(Lifecycle::new(&registry).start_with(&guest, &mut launch)).unwrap();
/// assert!(seq.proceeds());
/// assert_eq!(launch.pid, Some(4242));
/// ```
#[async_trait]
pub trait DriverActions: Send {
    /// The driver's own error, returned unchanged in [`LifecycleError::Driver`].
    type Error: Send;

    /// Runs after the hooks of `phase` let the operation go on. `guest` carries the XML
    /// the hooks ended with (after `migrate` or `restore`, the filtered one).
    ///
    /// An error stops a start: [`DriverActions::undo`] runs for the phases before this
    /// one (if any did work), then the cleanup hooks. What this call itself had half
    /// done is its own to clean up before it returns the error. An error after
    /// `migrate` or `restore` ends the sequence before anything started: no undo, no
    /// cleanup hooks. In a stop, an error does not stop the sequence.
    async fn after(&mut self, phase: Phase, guest: &Guest) -> Result<(), Self::Error>;

    /// A start failed (a hook refused, or [`DriverActions::after`] failed) after the work
    /// of `done` was in place (phases in order; never empty): undo it. Runs once, before
    /// the cleanup hooks (`stopped`, `release failed`). After a failed reconnect, `done`
    /// is `[Reconnect]`: stop the guest that was found running.
    async fn undo(&mut self, done: &[Phase], guest: &Guest);
}

/// No driver work: what [`Lifecycle::start`] and the other plain sequences use.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoActions;

#[async_trait]
impl DriverActions for NoActions {
    type Error = Infallible;
    async fn after(&mut self, _phase: Phase, _guest: &Guest) -> Result<(), Infallible> {
        Ok(())
    }
    async fn undo(&mut self, _done: &[Phase], _guest: &Guest) {}
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
        /// The hook that refused; `None` when the driver's own action failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        hook: Option<String>,
    },
    /// The guest is killed (a failed reconnect).
    Killed {
        /// libvirt's message for the failure.
        message: String,
        /// The hook that failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        hook: Option<String>,
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
    /// Whether it was cancelled ([`Lifecycle::cancel_with`]): its last step is the
    /// event that was stopped, and nothing ran after it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

impl Sequence {
    /// Whether the operation goes through.
    pub fn proceeds(&self) -> bool {
        self.verdict == Verdict::Proceed
    }

    /// Every failure libvirt ignores, in order (a `stopped` hook that failed, ...).
    pub fn ignored_failures(&self) -> impl Iterator<Item = &crate::HookRecord> {
        self.steps
            .iter()
            .filter(|s| s.result == StepResult::FailureIgnored)
            .flat_map(|s| s.report.hooks.iter().filter(|r| !r.success))
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

/// Why a sequence's operation does not go on. `E` is the driver's own error type
/// ([`DriverActions::Error`]); plain sequences have none.
#[derive(Debug)]
#[non_exhaustive]
pub enum LifecycleError<E = Infallible> {
    /// A hook refused the operation. The failure names the hook, its status and its
    /// stderr ([`HookFailure::failed_hook`]); the sequence has every step, the cleanup
    /// hooks included.
    Refused {
        /// libvirt's error.
        failure: HookFailure,
        /// What ran.
        sequence: Box<Sequence>,
    },
    /// A `reconnect` hook failed: libvirt kills the guest (the stop hooks ran).
    Killed {
        /// libvirt's error.
        failure: HookFailure,
        /// What ran.
        sequence: Box<Sequence>,
    },
    /// The driver's own action failed after the hooks of `phase`; the cleanup hooks ran.
    Driver {
        /// The driver's error, unchanged.
        error: E,
        /// The phase whose action failed.
        phase: Phase,
        /// What ran.
        sequence: Box<Sequence>,
    },
    /// The driver has no such sequence; nothing ran.
    Unsupported(UnsupportedScenario),
    /// Cancelled ([`Lifecycle::cancel_with`]): nothing ran after the stopped event, not
    /// even cleanup hooks or undo. The driver brings the object down itself.
    Cancelled {
        /// The driver phases whose action was done (to undo).
        done: Vec<Phase>,
        /// What ran; its last step is the event that was stopped.
        sequence: Box<Sequence>,
    },
}

impl<E> LifecycleError<E> {
    /// The record of what ran (none for `Unsupported`).
    pub fn sequence(&self) -> Option<&Sequence> {
        match self {
            LifecycleError::Refused { sequence, .. }
            | LifecycleError::Killed { sequence, .. }
            | LifecycleError::Driver { sequence, .. }
            | LifecycleError::Cancelled { sequence, .. } => Some(sequence),
            LifecycleError::Unsupported(_) => None,
        }
    }

    /// The hook failure, when a hook refused or failed a reconnect.
    pub fn failure(&self) -> Option<&HookFailure> {
        match self {
            LifecycleError::Refused { failure, .. } | LifecycleError::Killed { failure, .. } => Some(failure),
            LifecycleError::Driver { .. } | LifecycleError::Unsupported(_) | LifecycleError::Cancelled { .. } => None,
        }
    }
}

impl LifecycleError<Infallible> {
    /// The same error for a driver error type: plain sequences never fail on one.
    pub fn with_driver_error<E>(self) -> LifecycleError<E> {
        match self {
            LifecycleError::Refused { failure, sequence } => LifecycleError::Refused { failure, sequence },
            LifecycleError::Killed { failure, sequence } => LifecycleError::Killed { failure, sequence },
            LifecycleError::Driver { error, .. } => match error {},
            LifecycleError::Unsupported(u) => LifecycleError::Unsupported(u),
            LifecycleError::Cancelled { done, sequence } => LifecycleError::Cancelled { done, sequence },
        }
    }
}

impl<E> From<UnsupportedScenario> for LifecycleError<E> {
    fn from(e: UnsupportedScenario) -> Self {
        LifecycleError::Unsupported(e)
    }
}

/// A driver's error is shown in the message (`… after `prepare` failed: <error>`), so
/// [`StdError::source`] continues with the driver error's own source, not the error
/// again (reporters that walk the chain would print it twice).
impl<E: fmt::Display> fmt::Display for LifecycleError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LifecycleError::Refused { failure, .. } => fmt::Display::fmt(failure, f),
            LifecycleError::Killed { failure, .. } => write!(f, "the guest is killed: {failure}"),
            LifecycleError::Driver { phase, error, .. } => {
                write!(f, "the driver's own work after `{phase}` failed: {error}")
            }
            LifecycleError::Unsupported(u) => fmt::Display::fmt(u, f),
            LifecycleError::Cancelled { sequence, .. } => write!(
                f,
                "the {} sequence was cancelled after {} event(s)",
                sequence.scenario.as_str(),
                sequence.steps.len()
            ),
        }
    }
}

impl<E: StdError + 'static> StdError for LifecycleError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            LifecycleError::Driver { error, .. } => error.source(),
            _ => None,
        }
    }
}

/// Runs libvirt's sequences against a registry.
///
/// ```
/// use std::sync::Arc;
/// use virt_hooks_core::{block_on, Driver, Guest, Lifecycle, LifecycleError, RegistryBuilder, HookOutcome, testing::RecordingHook};
/// let rec = Arc::new(RecordingHook::new("rec").returning(|| HookOutcome::exited(1).with_stderr("no\n")));
/// let registry = RegistryBuilder::new().shared_hook(Some(Driver::Qemu), rec.clone()).build();
/// let guest = Guest::new(Driver::Qemu, "vm", "<domain/>\n");
/// let Err(LifecycleError::Refused { failure, .. }) = block_on(Lifecycle::new(&registry).start(&guest)) else {
///     panic!("the hook refuses every start");
/// };
/// assert_eq!(failure.failed_hook().name, "rec");
/// assert_eq!(failure.failed_hook().stderr, "no\n");
/// assert_eq!(rec.lines(), ["vm prepare begin -", "vm stopped end -", "vm release end failed"]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle<'r> {
    registry: &'r Registry,
    release_reasons: bool,
    cancel: Option<&'r crate::Cancel>,
}

/// What the steps of a start-like sequence have done so far.
struct Run<'a, A> {
    seq: Sequence,
    actions: &'a mut A,
    done: Vec<Phase>,
}

/// Why a sequence stopped early, before the error is built.
enum Stop<E> {
    Refused(HookFailure),
    Driver(E, Phase),
    Cancelled,
}

impl<'r> Lifecycle<'r> {
    /// Sequences over this registry.
    pub fn new(registry: &'r Registry) -> Self {
        Lifecycle {
            registry,
            release_reasons: true,
            cancel: None,
        }
    }

    /// Sequences that `cancel` stops. At the cancel the running event's hook is stopped
    /// and awaited ([`Registry::fire_until`]); then nothing more runs: no later event, no
    /// driver action, no cleanup hook, no undo. The sequence returns
    /// [`LifecycleError::Cancelled`] with the steps that ran and the driver phases that
    /// were done, so that the driver can bring the object down itself (for a start:
    /// undo those phases, then [`Lifecycle::stop`], which gives the plugins that ran
    /// their `stopped` and `release`).
    pub fn cancel_with(mut self, cancel: &'r crate::Cancel) -> Self {
        self.cancel = Some(cancel);
        self
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
    /// As the scenario's own method.
    pub async fn run(
        &self,
        scenario: Scenario,
        guest: &Guest,
        reason: ReleaseReason,
    ) -> Result<Sequence, LifecycleError> {
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

    /// Start: prepare → start → started (networks: start → started); when a hook
    /// refuses, stopped and `release failed`.
    ///
    /// # Errors
    /// [`LifecycleError::Refused`] when a hook refused; `Unsupported` for the daemon.
    pub async fn start(&self, guest: &Guest) -> Result<Sequence, LifecycleError> {
        self.start_with(guest, &mut NoActions).await
    }

    /// Start, calling `actions.after(phase)` after each step the hooks let through, and
    /// `actions.undo` before the cleanup hooks when the start fails after some of that
    /// work was done.
    ///
    /// # Errors
    /// As [`Lifecycle::start`], and [`LifecycleError::Driver`] when an action failed.
    pub async fn start_with<A: DriverActions>(
        &self,
        guest: &Guest,
        actions: &mut A,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        let mut run = Run::new(Scenario::Start, actions);
        let stop = self.start_steps(&mut run, guest).await?;
        run.finish(self, guest, stop).await
    }

    /// Stop: stopped → release with `reason` (drivers other than qemu pass `-`). libvirt
    /// ignores these hooks' failures: they are in the sequence's record.
    ///
    /// # Errors
    /// `Unsupported` for the daemon.
    pub async fn stop(&self, guest: &Guest, reason: ReleaseReason) -> Result<Sequence, LifecycleError> {
        self.stop_with(guest, reason, &mut NoActions).await
    }

    /// Stop, calling `actions.after(Stopped)` and `actions.after(Release)` (release
    /// resources). A failed action does not stop the sequence: the remaining hooks and
    /// actions run, then the first error is returned.
    ///
    /// # Errors
    /// As [`Lifecycle::stop`], and [`LifecycleError::Driver`] for the first failed action.
    pub async fn stop_with<A: DriverActions>(
        &self,
        guest: &Guest,
        reason: ReleaseReason,
        actions: &mut A,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        let mut run = Run::new(Scenario::Stop, actions);
        let failed = self.stop_steps(&mut run, guest, reason, false).await?;
        run.finish_stop(failed)
    }

    /// Restore: restore (may rewrite the XML) → start with the resulting XML. A failing
    /// restore hook aborts with no cleanup hooks.
    ///
    /// # Errors
    /// As [`Lifecycle::start`]; `Unsupported` when the driver has no restore hook (only
    /// qemu has).
    pub async fn restore(&self, guest: &Guest) -> Result<Sequence, LifecycleError> {
        self.restore_with(guest, &mut NoActions).await
    }

    /// Restore with driver actions; `after(Restore)` sees the filtered XML.
    ///
    /// # Errors
    /// As [`Lifecycle::restore`] and [`Lifecycle::start_with`].
    pub async fn restore_with<A: DriverActions>(
        &self,
        guest: &Guest,
        actions: &mut A,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        self.filter_then_start(Scenario::Restore, Phase::Restore, guest, actions)
            .await
    }

    /// Incoming migration: migrate (may rewrite the XML) → start with the result.
    ///
    /// # Errors
    /// As [`Lifecycle::start`]; `Unsupported` when the driver has no migrate hook (qemu
    /// and libxl have).
    pub async fn migrate_in(&self, guest: &Guest) -> Result<Sequence, LifecycleError> {
        self.migrate_in_with(guest, &mut NoActions).await
    }

    /// Incoming migration with driver actions; `after(Migrate)` sees the filtered XML,
    /// and so does every later phase.
    ///
    /// # Errors
    /// As [`Lifecycle::migrate_in`] and [`Lifecycle::start_with`].
    pub async fn migrate_in_with<A: DriverActions>(
        &self,
        guest: &Guest,
        actions: &mut A,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        self.filter_then_start(Scenario::MigrateIn, Phase::Migrate, guest, actions)
            .await
    }

    /// Outgoing migration, on the source: stopped → `release migrated`.
    ///
    /// # Errors
    /// As [`Lifecycle::stop`].
    pub async fn migrate_out(&self, guest: &Guest) -> Result<Sequence, LifecycleError> {
        self.migrate_out_with(guest, &mut NoActions).await
    }

    /// Outgoing migration with driver actions, as [`Lifecycle::stop_with`].
    ///
    /// # Errors
    /// As [`Lifecycle::stop_with`].
    pub async fn migrate_out_with<A: DriverActions>(
        &self,
        guest: &Guest,
        actions: &mut A,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        let mut run = Run::new(Scenario::MigrateOut, actions);
        let failed = self.stop_steps(&mut run, guest, ReleaseReason::Migrated, false).await?;
        run.finish_stop(failed)
    }

    /// Reconnect to a running guest; a failure kills it (with the stop hooks).
    ///
    /// # Errors
    /// [`LifecycleError::Killed`] when a hook failed; `Unsupported` when the driver has
    /// no reconnect hook (bhyve, network).
    pub async fn reconnect(&self, guest: &Guest) -> Result<Sequence, LifecycleError> {
        self.reconnect_with(guest, &mut NoActions).await
    }

    /// Reconnect with driver actions: `after(Reconnect)` when the hooks let it through;
    /// when they do not, `undo(&[Reconnect])` (stop the guest) before the stop hooks.
    ///
    /// # Errors
    /// As [`Lifecycle::reconnect`], and [`LifecycleError::Driver`] when `after` failed
    /// (the guest is then not killed: the driver decides).
    pub async fn reconnect_with<A: DriverActions>(
        &self,
        guest: &Guest,
        actions: &mut A,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        let mut run = Run::new(Scenario::Reconnect, actions);
        let event = event(guest, Scenario::Reconnect, "reconnect", "-", &guest.xml)?;
        let failed = run.seq.step(self.registry, &event, false, self.cancel).await;
        if run.seq.cancelled {
            return Err(run.cancelled());
        }
        match failed {
            Some(failure) => {
                run.seq.verdict = Verdict::Killed {
                    message: failure.to_string(),
                    hook: Some(failure.failed_hook().name.clone()),
                };
                run.actions.undo(&[Phase::Reconnect], guest).await;
                self.stop_steps(&mut run, guest, ReleaseReason::Failed, true).await?;
                if run.seq.cancelled {
                    return Err(run.cancelled());
                }
                Err(LifecycleError::Killed {
                    failure,
                    sequence: Box::new(run.seq),
                })
            }
            None => match run.actions.after(Phase::Reconnect, guest).await {
                Ok(()) => Ok(run.seq),
                Err(error) => Err(LifecycleError::Driver {
                    error,
                    phase: Phase::Reconnect,
                    sequence: Box::new(run.seq),
                }),
            },
        }
    }

    /// Daemon start, then a reconnect for each running guest. Each failure kills that
    /// guest only; the verdict reports the last one killed. Guests whose driver has no
    /// reconnect hook (bhyve, network) are passed over, as libvirt does. A driver that
    /// must act on each kill calls [`Lifecycle::daemon_start`] with no guests, then
    /// [`Lifecycle::reconnect`] for each.
    pub async fn daemon_start(&self, running: &[Guest]) -> Sequence {
        let mut seq = Sequence::new(Scenario::DaemonStart);
        seq.step(self.registry, &DaemonEvent::Start, false, self.cancel).await;
        for guest in running {
            let mut sub = match self.reconnect(guest).await {
                Ok(sub) => sub,
                Err(LifecycleError::Killed { sequence, .. }) => *sequence,
                Err(LifecycleError::Cancelled { mut sequence, .. }) => {
                    seq.steps.append(&mut sequence.steps);
                    seq.cancelled = true;
                    break;
                }
                Err(_) => continue,
            };
            seq.steps.append(&mut sub.steps);
            if sub.verdict != Verdict::Proceed {
                seq.verdict = sub.verdict;
            }
        }
        seq
    }

    /// Daemon reload (SIGHUP): the reload hook, then the registry re-reads which
    /// drivers have hooks.
    pub async fn daemon_reload(&self) -> Sequence {
        let mut seq = Sequence::new(Scenario::DaemonReload);
        seq.step(self.registry, &DaemonEvent::Reload, false, self.cancel).await;
        self.registry.reload();
        seq
    }

    /// Daemon shutdown.
    pub async fn daemon_shutdown(&self) -> Sequence {
        let mut seq = Sequence::new(Scenario::DaemonShutdown);
        seq.step(self.registry, &DaemonEvent::Shutdown, false, self.cancel)
            .await;
        seq
    }

    async fn filter_then_start<A: DriverActions>(
        &self,
        scenario: Scenario,
        phase: Phase,
        guest: &Guest,
        actions: &mut A,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        let mut run = Run::new(scenario, actions);
        // Fails before anything runs when the driver has no such filter event.
        let filter = event(guest, scenario, phase.op(), "-", &guest.xml)?;
        let refused = run.seq.step(self.registry, &filter, false, self.cancel).await;
        if run.seq.cancelled {
            return Err(run.cancelled());
        }
        if let Some(failure) = refused {
            // No cleanup hooks: nothing was started.
            run.seq.verdict = Verdict::Aborted {
                message: failure.to_string(),
                hook: Some(failure.failed_hook().name.clone()),
            };
            return Err(LifecycleError::Refused {
                failure,
                sequence: Box::new(run.seq),
            });
        }
        let report = &run.seq.steps[run.seq.steps.len() - 1].report;
        let xml = report
            .document_text()
            .map_or_else(|| guest.xml.clone(), |d| d.into_owned());
        let filtered = Guest {
            xml: xml.clone(),
            ..guest.clone()
        };
        run.seq.xml = Some(xml);
        let stop = match run.actions.after(phase, &filtered).await {
            Ok(()) => {
                run.done.push(phase);
                self.start_steps(&mut run, &filtered).await?
            }
            Err(error) => {
                // Nothing of the start ran: no cleanup hooks, as after a refused filter.
                run.seq.verdict = Verdict::Aborted {
                    message: format!("the driver's own work after `{phase}` failed"),
                    hook: None,
                };
                return Err(LifecycleError::Driver {
                    error,
                    phase,
                    sequence: Box::new(run.seq),
                });
            }
        };
        run.finish(self, &filtered, stop).await
    }

    /// Runs the start events until one is refused or an action fails.
    async fn start_steps<A: DriverActions>(
        &self,
        run: &mut Run<'_, A>,
        guest: &Guest,
    ) -> Result<Option<Stop<A::Error>>, UnsupportedScenario> {
        let events = start_ops(guest)
            .iter()
            .map(|&(op, _)| event(guest, run.seq.scenario, op, "-", &guest.xml))
            .collect::<Result<Vec<_>, _>>()?;
        for (ev, &(_, phase)) in events.iter().zip(start_ops(guest)) {
            if let Some(failure) = run.seq.step(self.registry, ev, false, self.cancel).await {
                return Ok(Some(Stop::Refused(failure)));
            }
            if run.seq.cancelled {
                return Ok(Some(Stop::Cancelled));
            }
            match run.actions.after(phase, guest).await {
                Ok(()) => run.done.push(phase),
                Err(error) => return Ok(Some(Stop::Driver(error, phase))),
            }
        }
        Ok(None)
    }

    /// Fires stopped and release; returns the first failed action.
    async fn stop_steps<A: DriverActions>(
        &self,
        run: &mut Run<'_, A>,
        guest: &Guest,
        reason: ReleaseReason,
        cleanup: bool,
    ) -> Result<Option<(A::Error, Phase)>, UnsupportedScenario> {
        let extra = if guest.driver == Driver::Qemu && self.release_reasons {
            reason.as_str()
        } else {
            "-"
        };
        let stopped = event(guest, run.seq.scenario, "stopped", "-", &guest.xml)?;
        // `release` does not exist for networks; their stop is `stopped` alone.
        let release = event(guest, run.seq.scenario, "release", extra, &guest.xml).ok();
        let mut failed = None;
        run.seq.step(self.registry, &stopped, cleanup, self.cancel).await;
        if run.seq.cancelled {
            return Ok(None);
        }
        if !cleanup {
            if let Err(e) = run.actions.after(Phase::Stopped, guest).await {
                failed = Some((e, Phase::Stopped));
            }
        }
        if let Some(release) = release {
            run.seq.step(self.registry, &release, cleanup, self.cancel).await;
            if run.seq.cancelled {
                return Ok(None);
            }
            if !cleanup {
                // Resources are released even when the work after `stopped` failed.
                if let Err(e) = run.actions.after(Phase::Release, guest).await {
                    failed.get_or_insert((e, Phase::Release));
                }
            }
        }
        Ok(failed)
    }
}

/// The start events of a driver and the phase of each.
fn start_ops(guest: &Guest) -> &'static [(&'static str, Phase)] {
    // Networks have no `prepare`: their start is `start` then `started`.
    if guest.driver == Driver::Network {
        &[("start", Phase::Start), ("started", Phase::Started)]
    } else {
        &[
            ("prepare", Phase::Prepare),
            ("start", Phase::Start),
            ("started", Phase::Started),
        ]
    }
}

impl<'a, A: DriverActions> Run<'a, A> {
    fn new(scenario: Scenario, actions: &'a mut A) -> Self {
        Run {
            seq: Sequence::new(scenario),
            actions,
            done: Vec::new(),
        }
    }

    /// Ends a start: on a failure, undo and the cleanup hooks, then the error.
    async fn finish(
        mut self,
        lifecycle: &Lifecycle<'_>,
        guest: &Guest,
        stop: Option<Stop<A::Error>>,
    ) -> Result<Sequence, LifecycleError<A::Error>> {
        let Some(stop) = stop else {
            return Ok(self.seq);
        };
        if let Stop::Cancelled = stop {
            return Err(self.cancelled());
        }
        self.seq.verdict = match &stop {
            Stop::Refused(failure) => Verdict::Aborted {
                message: failure.to_string(),
                hook: Some(failure.failed_hook().name.clone()),
            },
            Stop::Driver(_, phase) => Verdict::Aborted {
                message: format!("the driver's own work after `{phase}` failed"),
                hook: None,
            },
            Stop::Cancelled => Verdict::Proceed,
        };
        if !self.done.is_empty() {
            self.actions.undo(&self.done, guest).await;
        }
        lifecycle
            .stop_steps(&mut self, guest, ReleaseReason::Failed, true)
            .await?;
        if self.seq.cancelled {
            return Err(self.cancelled());
        }
        let sequence = Box::new(self.seq);
        Err(match stop {
            Stop::Refused(failure) => LifecycleError::Refused { failure, sequence },
            Stop::Driver(error, phase) => LifecycleError::Driver { error, phase, sequence },
            Stop::Cancelled => unreachable!("returned above"),
        })
    }

    /// The error of a cancelled sequence: what ran, and the driver's phases done.
    fn cancelled(self) -> LifecycleError<A::Error> {
        LifecycleError::Cancelled {
            done: self.done,
            sequence: Box::new(self.seq),
        }
    }

    fn finish_stop(self, failed: Option<(A::Error, Phase)>) -> Result<Sequence, LifecycleError<A::Error>> {
        if self.seq.cancelled {
            return Err(self.cancelled());
        }
        match failed {
            None => Ok(self.seq),
            Some((error, phase)) => Err(LifecycleError::Driver {
                error,
                phase,
                sequence: Box::new(self.seq),
            }),
        }
    }
}

impl Sequence {
    fn new(scenario: Scenario) -> Self {
        Sequence {
            scenario,
            steps: Vec::new(),
            verdict: Verdict::Proceed,
            xml: None,
            cancelled: false,
        }
    }

    /// Fires one event and records it; returns the failure if it stops the operation.
    /// Once cancelled, nothing more is fired (not even cleanup hooks) and `None` is
    /// returned: callers check [`Sequence::cancelled`].
    async fn step(
        &mut self,
        registry: &Registry,
        event: &dyn HookEvent,
        cleanup: bool,
        cancel: Option<&crate::Cancel>,
    ) -> Option<HookFailure> {
        if self.cancelled || cancel.is_some_and(crate::Cancel::is_cancelled) {
            self.cancelled = true;
            return None;
        }
        let fired = match cancel {
            Some(cancel) => registry.fire_until(event, cancel).await,
            None => registry.fire(event).await,
        };
        let stopped = match &fired {
            Ok(report) => report.cancelled,
            Err(failure) => failure.report().cancelled,
        };
        if stopped {
            self.cancelled = true;
            let report = fired.unwrap_or_else(HookFailure::into_report);
            self.steps.push(Step {
                report,
                result: StepResult::Fatal,
                cleanup,
            });
            return None;
        }
        let (report, result, fatal) = match fired {
            Ok(report) if report.succeeded() => (report, StepResult::Ok, None),
            Ok(report) => (report, StepResult::FailureIgnored, None),
            Err(failure) if failure.is_fatal() && !cleanup => {
                (failure.report().clone(), StepResult::Fatal, Some(failure))
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
        block_on(Lifecycle::new(&r).stop(&Guest::new(Driver::Lxc, "ct", "<domain/>\n"), ReleaseReason::Destroyed))
            .unwrap();
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

    #[test]
    fn scenario_names_are_typed_errors() {
        let err = Scenario::parse_for(Driver::Daemon, "migrate-in").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown scenario `migrate-in` for daemon, expected one of start, reload, shutdown"
        );
        assert_eq!("migrate-in".parse::<Scenario>(), Ok(Scenario::MigrateIn));
    }
}

#[cfg(test)]
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
