//! The core of a hook framework for hypervisor drivers, after libvirt's hooks.
//!
//! A driver calls hooks at lifecycle points (a guest's prepare/start/started/stopped/
//! release, migrate, restore, reconnect; the daemon's start/reload/shutdown); a hook can
//! veto the operation by failing, and for `migrate`/`restore` rewrite the guest's XML.
//! This crate has the traits, the typed events with libvirt's failure policies, the
//! [`Registry`] that composes hooks with libvirt's semantics, the [`Lifecycle`]
//! sequences, and test doubles. Backends (exec, dylib, wasm) live in their own crates
//! and plug in through [`HookLoader`].
//!
//! ```
//! use hooks_core::{Driver, Guest, Lifecycle, RegistryBuilder, testing::MockHook};
//! let registry = RegistryBuilder::new()
//!     .hook(Driver::Qemu, MockHook::succeeding("inventory"))
//!     .build();
//! let guest = Guest::new(Driver::Qemu, "web1", "<domain type='kvm'/>\n");
//! let seq = pollster::block_on(Lifecycle::new(&registry).start(&guest)).unwrap();
//! assert!(seq.proceeds());
//! ```
//!
//! ### Crate feature flags
//! - `testing`: [`testing::MockHook`] and [`testing::RecordingHook`].
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

mod compiled;
mod driver;
mod error;
mod event;
mod events;
mod hook;
mod lifecycle;
mod loader;
mod outcome;
mod registry;
mod report;
mod settings;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trust;

pub use inventory;

pub use self::compiled::{compiled_hooks, CompiledHook};
pub use self::driver::{Driver, UnknownDriver};
pub use self::error::{chain as error_chain, HookError, HookFailure, LoadError};
pub use self::event::{libvirt_event_spec, libvirt_ops, EventSpec, FailurePolicy, HookEvent, InputKind, RawEvent};
pub use self::events::{
    BhyveEvent, DaemonEvent, LibxlEvent, LxcEvent, NetworkEvent, QemuEvent, ReleaseReason, UnknownReleaseReason,
};
pub use self::hook::{EventArgs, Hook, Invocation};
pub use self::lifecycle::{
    DriverAction, Guest, Lifecycle, Scenario, Sequence, Step, StepResult, UnsupportedScenario, Verdict,
};
pub use self::loader::{
    registered_loaders, DirEntry, Disposition, EntryRole, HookLoader, HooksDir, LoaderRegistration, SkipReason,
};
pub use self::outcome::{HookOutcome, HookStatus};
pub use self::registry::{Registry, RegistryBuilder};
pub use self::report::{format_duration, HookRecord, InputSource, Report, StatusRecord};
pub use self::settings::{
    parse_duration, parse_size, HookPolicy, HookSettings, InvalidValue, Matcher, SettingsError, Timeout, MAX_TIMEOUT,
    MIN_TIMEOUT,
};
pub use self::trust::{TrustPolicy, Untrusted};
