//! [`Lifecycle`]: runs the sequences, firing each event and doing the driver's work between them.

use super::*;

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
