//! Hooks compiled into the program and registered at link time with `inventory`, so a
//! driver binary picks up every hook linked into it with one call:
//! [`crate::RegistryBuilder::compiled_hooks`].

use std::fmt;
use std::sync::Arc;

use crate::{Driver, Hook};

/// A hook registered at link time; made with [`compiled_hook!`](crate::compiled_hook).
pub struct CompiledHook {
    name: &'static str,
    drivers: &'static [Driver],
    order: i32,
    make: fn() -> Arc<dyn Hook>,
}

impl fmt::Debug for CompiledHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledHook")
            .field("name", &self.name)
            .field("drivers", &self.drivers)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

impl CompiledHook {
    /// A registration: `drivers` empty means every driver; `make` builds the one instance.
    pub const fn new(name: &'static str, drivers: &'static [Driver], order: i32, make: fn() -> Arc<dyn Hook>) -> Self {
        CompiledHook {
            name,
            drivers,
            order,
            make,
        }
    }

    /// Its registration name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The drivers it wants (empty: all).
    pub fn drivers(&self) -> &'static [Driver] {
        self.drivers
    }

    /// Its position key: lower runs first.
    pub fn order(&self) -> i32 {
        self.order
    }

    /// Builds the hook.
    pub fn make(&self) -> Arc<dyn Hook> {
        (self.make)()
    }
}

inventory::collect!(CompiledHook);

/// Every hook compiled into this program, in run order: ascending `order`, then name
/// (link order is not stable, so it never decides).
pub fn compiled_hooks() -> Vec<&'static CompiledHook> {
    let mut hooks: Vec<_> = inventory::iter::<CompiledHook>.into_iter().collect();
    hooks.sort_by_key(|h| (h.order, h.name));
    hooks
}

/// Registers a Rust [`Hook`] at link time.
///
/// ```
/// use async_trait::async_trait;
/// use virt_hooks_core::{compiled_hook, Hook, HookOutcome, Invocation, RegistryBuilder};
///
/// struct Audit;
/// #[async_trait]
/// impl Hook for Audit {
///     fn name(&self) -> &str { "audit" }
///     async fn call(&self, _inv: &Invocation) -> HookOutcome { HookOutcome::success() }
/// }
///
/// compiled_hook!(name: "audit", drivers: [Qemu, Lxc], order: 10, hook: Audit);
///
/// let registry = RegistryBuilder::new().compiled_hooks().build();
/// # drop(registry);
/// ```
///
/// `drivers: []` means every driver. Hooks run in ascending `order`, then by name.
#[macro_export]
macro_rules! compiled_hook {
    (name: $name:literal, drivers: [$($driver:ident),* $(,)?], order: $order:expr, hook: $make:expr $(,)?) => {
        $crate::__private::inventory::submit! {
            $crate::backend::CompiledHook::new(
                $name,
                &[$($crate::Driver::$driver),*],
                $order,
                || -> ::std::sync::Arc<dyn $crate::Hook> { ::std::sync::Arc::new($make) },
            )
        }
    };
}

/// Announces a backend's [`HookLoader`](crate::backend::HookLoader) to the core at link
/// time, so that hooks directories hand it the files it claims:
/// `virt_hooks_core::register_loader!(&MY_LOADER);` at a module's top level.
#[macro_export]
macro_rules! register_loader {
    ($loader:expr $(,)?) => {
        $crate::__private::inventory::submit! { $crate::backend::LoaderRegistration::new($loader) }
    };
}
