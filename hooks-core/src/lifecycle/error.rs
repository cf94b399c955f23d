//! Why a sequence's operation does not go on, and the scenario names a driver does not have.

use super::*;

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
