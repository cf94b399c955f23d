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

// `scenario.rs` has what a sequence is made of, `record.rs` what ran, `error.rs` why an
// operation does not go on, and `runner.rs` runs the sequences.
mod error;
mod record;
mod runner;
mod scenario;
#[cfg(test)]
mod tests;

pub use self::error::{LifecycleError, UnknownScenario, UnsupportedScenario};
pub use self::record::{Sequence, Step, StepResult, Verdict};
pub use self::runner::Lifecycle;
pub use self::scenario::{DriverActions, Guest, NoActions, Phase, Scenario};

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::Serialize;

use crate::{
    libvirt_event_spec, DaemonEvent, Driver, HookEvent, HookFailure, RawEvent, Registry, ReleaseReason, Report,
};
