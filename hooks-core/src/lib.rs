//! The core of a hook framework for hypervisor drivers, after libvirt's hooks.
//!
//! A driver calls hooks at lifecycle points (a guest's prepare/start/started/stopped/
//! release, migrate, restore, reconnect; the daemon's start/reload/shutdown); a hook can
//! veto the operation by failing, and for `migrate`/`restore` rewrite the guest's XML.
//!
//! # The contract
//! - **`Err` means stop.** [`Registry::fire`] returns `Err(HookFailure)` exactly when the
//!   operation must not go on: a required hook failed at an event whose policy aborts
//!   it, kills the guest, or returns the error to the caller. A failure libvirt ignores
//!   (`stopped`, `release`, daemon events) is `Ok(report)` with
//!   [`Report::succeeded`] false. The [`Lifecycle`] sequences return
//!   `Err(LifecycleError)` the same way, naming the hook that refused; a driver's own
//!   error comes back unchanged in [`LifecycleError::Driver`]. So `?` is right.
//! - **Limits are guaranteed.** [`RegistryBuilder::timeout`] (per hook),
//!   [`RegistryBuilder::event_timeout`] (per event) and [`RegistryBuilder::max_output`]
//!   apply to every hook, custom ones included: a call past its time is dropped, a hook
//!   past the event's budget is not started, output past the cap is cut. They are
//!   [`layer`]s; add your own with [`RegistryBuilder::layer`]. They hold under tokio
//!   (multi-thread or current-thread) and through [`Registry::fire_blocking`] with no
//!   runtime. **Except a custom hook that blocks its thread** (`std::thread::sleep`,
//!   blocking I/O, a long loop) without yielding: a timeout is enforced when the hook's
//!   future is polled, so such a hook runs on past it, and under tokio it holds a worker
//!   meanwhile. Give blocking work to `tokio::task::spawn_blocking` and await it (the
//!   call is then dropped at its time; the thread finishes on its own), or use a
//!   backend: exec, WASM and dylib hooks enforce their timeouts themselves.
//! - **Dropping cleans up.** Dropping a future from the registry stops the running hook:
//!   an exec hook's whole process group is killed and reaped, a WASM call is
//!   interrupted, a native call that cannot be interrupted finishes on its own thread
//!   (never an async worker) and its result is dropped. Hooks after it do not run, nor
//!   do a dropped sequence's cleanup hooks (see [`lifecycle`](Lifecycle#cancellation)).
//! - **Nothing blocks the executor.** Under tokio, directory scans, sidecar reads and
//!   loading run on the blocking pool, and so do exec, WASM and native calls.
//!
//! A [`Hook`] is a call; a [`Registry`] runs hooks at each [`HookEvent`] with libvirt's
//! rules; a [`Lifecycle`] fires a whole sequence (start: prepare, start, started):
//!
//! ```
//! use async_trait::async_trait;
//! use virt_hooks_core::events::QemuEvent;
//! use virt_hooks_core::{block_on, Driver, Guest, Hook, HookEntry, HookEvent, HookOutcome, Invocation};
//! use virt_hooks_core::{Lifecycle, LifecycleError, RegistryBuilder};
//!
//! /// Refuses to start guests named `test-*`.
//! struct NoTestGuests;
//!
//! #[async_trait]
//! impl Hook for NoTestGuests {
//!     fn name(&self) -> &str {
//!         "no-test-guests"
//!     }
//!     async fn call(&self, inv: &Invocation) -> HookOutcome {
//!         if inv.object().starts_with("test-") {
//!             return HookOutcome::exited(1).with_stderr("test guests may not run here\n");
//!         }
//!         HookOutcome::success()
//!     }
//! }
//!
//! let registry = RegistryBuilder::new()
//!     .hook(Driver::Qemu, HookEntry::new(NoTestGuests).matching(|ev: &dyn HookEvent| ev.op() == "prepare"))
//!     .build();
//!
//! // A refusal is an `Err` that names the hook; libvirt's cleanup events ran.
//! let guest = Guest::new(Driver::Qemu, "test-1", "<domain/>\n");
//! match block_on(Lifecycle::new(&registry).start(&guest)) {
//!     Err(LifecycleError::Refused { failure, .. }) => {
//!         assert_eq!(failure.failed_hook().name, "no-test-guests");
//!         assert_eq!(failure.failed_hook().stderr, "test guests may not run here\n");
//!     }
//!     other => panic!("expected a refusal, got {other:?}"),
//! }
//! let web = Guest::new(Driver::Qemu, "web1", "<domain/>\n");
//! assert!(block_on(Lifecycle::new(&registry).start(&web)).is_ok());
//!
//! // Or one event at a time; `fire` is the async form.
//! let stopped = QemuEvent::Stopped { name: "web1".into(), xml: "<domain/>\n".into() };
//! assert!(registry.fire_blocking(&stopped).unwrap().succeeded());
//! ```
//!
//! This crate has the traits, the typed events with libvirt's failure policies, the
//! [`Registry`], the [`Lifecycle`] sequences, and test doubles. Backends (exec, dylib,
//! wasm) live in their own crates and plug in through [`backend::HookLoader`].
//!
//! # Where hooks go
//! A driver keeps its hooks in a directory of its own, in libvirt's shape:
//! [`RegistryBuilder::hooks_dir`]`(DIR)` runs `DIR/<driver>`, then `DIR/<driver>.d/*` in
//! byte-wise order, executables, `*.wasm` and `*.so` alike, through the backends linked
//! into the program (see [`HooksDir`]). That is not where plugins go on a libvirt host:
//! there libvirt runs `/etc/libvirt/hooks/<driver>.d/` itself and skips what is not
//! executable, and hookctl's dispatcher runs plugins from `<driver>.plugins/`, which
//! `hooks_dir` never reads ([`HooksDir::plugins`] does). The repository's
//! `docs/embedding.md` has the table ("Which layout is for whom").
//!
//! ### Crate feature flags
//! - `testing`: [`testing::MockHook`] and [`testing::RecordingHook`].
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod cancel;
mod compiled;
mod document;
mod driver;
pub mod error;
mod event;
pub mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hook;
pub mod layer;
pub mod lifecycle;
mod loader;
pub mod outcome;
mod plugin_config;
mod registry;
pub mod report;
mod settings;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
pub mod trust;
mod xml;
mod xpath;

// What a driver uses; the rest is in the modules named for who needs it (`events`,
// `lifecycle`, `report`, `state`, `cancel`, `error`, `outcome`, `backend`).
pub use self::cancel::Cancel;
pub use self::driver::Driver;
pub use self::error::{HookError, HookFailure, LoadError};
pub use self::event::{FailurePolicy, HookEvent, RawEvent};
pub use self::hook::{EventArgs, Hook, HookEntry, Invocation};
pub use self::lifecycle::{DriverActions, Guest, Lifecycle, LifecycleError, Phase};
pub use self::loader::HooksDir;
pub use self::outcome::{HookOutcome, HookStatus};
pub use self::registry::{block_on, Registry, RegistryBuilder, DEFAULT_MAX_OUTPUT};
pub use self::report::{Failure, HookRecord, Report};
pub use self::settings::{HookPolicy, OnReconnectFailure};

// The crate's own modules name these from the root, as before they moved.
#[allow(unused_imports)]
pub(crate) use self::{
    cancel::{Cancelled, Watch},
    document::{DocumentChange, MAX_DIFF},
    driver::UnknownDriver,
    error::{chain as error_chain, LoadErrorKind},
    events::{
        BhyveEvent, DaemonEvent, LibxlEvent, LxcEvent, NetworkEvent, QemuEvent, ReleaseReason, UnknownReleaseReason,
    },
    lifecycle::{NoActions, Scenario, Sequence, Step, StepResult, UnknownScenario, UnsupportedScenario, Verdict},
    outcome::Containment,
    report::{InputSource, SkippedEntry, StatusRecord},
    settings::MAX_TIMEOUT,
    state::{
        state_ends_at, state_ends_object, state_orphaned_by_failure, StateEntry, StateError, StateRoot,
        DEFAULT_STATE_MAX, SYSTEM_STATE_ROOT,
    },
};

// For the crate's own modules; outside, these are in `backend`.
pub(crate) use self::backend::*;

/// For backend authors and tools: loaders and their registration, directory entries,
/// per-hook settings, the trust rule, libvirt's event table, and helpers for messages.
/// A driver that embeds the registry needs none of it.
pub mod backend {

    pub use crate::compiled::{compiled_hooks, CompiledHook};
    pub use crate::event::{libvirt_event_spec, libvirt_ops, EventSpec, InputKind};
    pub use crate::loader::{
        registered_loaders, DirEntry, Disposition, EntryRole, HookLoader, LoaderRegistration, SkipReason,
    };
    pub use crate::plugin_config::{
        ConfigValue, PluginConfig, CONFIG_ENV_PREFIX, MAX_CONFIG_BYTES, MAX_CONFIG_KEY, MAX_CONFIG_KEYS,
    };
    pub use crate::registry::{blocking_pool, caller_may_block};
    pub use crate::report::format_duration;
    pub use crate::settings::{
        parse_duration, parse_size, parse_span, HookSettings, InvalidValue, Matcher, SettingsError, TimeoutSetting,
        MAX_TIMEOUT, MIN_TIMEOUT,
    };
    pub use crate::trust::{TrustPolicy, Untrusted};
    pub use crate::xpath::{limits as xpath_limits, EventDocument, XPath, XPathError};
}

/// What `compiled_hook!` expands to needs; not an API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}

/// The README's examples, compiled as doc tests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
