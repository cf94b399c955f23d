//! A property test of the registry against a small reference model of libvirt's rules:
//! every hook runs; a filter event chains the last non-blank stdout of a successful hook
//! while every required hook so far succeeded, else hooks read the original; the event
//! fails if a required hook failed; `fire` returns `Err` exactly when that failure stops
//! the operation; the resulting document exists only when the event succeeded.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::report::InputSource;
use virt_hooks_core::testing::MockHook;
use virt_hooks_core::{Driver, HookFailure, HookOutcome, HookPolicy, RegistryBuilder, Report};

#[derive(Debug, Clone)]
enum Output {
    Nothing,
    Blanks,
    Document(u8),
    /// Not a document libvirt could take: a filter stage that prints it fails.
    Malformed(u8),
}

#[derive(Debug, Clone)]
struct Behaviour {
    code: i32,
    output: Output,
    optional: bool,
}

impl Output {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Output::Nothing => Vec::new(),
            Output::Blanks => b" \n\t\n".to_vec(),
            Output::Document(n) => format!("<domain id='{n}'/>").into_bytes(),
            Output::Malformed(n) if n % 2 == 0 => format!("<domain id='{n}'>").into_bytes(),
            Output::Malformed(n) => format!("<network id='{n}'/>").into_bytes(),
        }
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    let output = prop_oneof![
        Just(Output::Nothing),
        Just(Output::Blanks),
        any::<u8>().prop_map(Output::Document),
        any::<u8>().prop_map(Output::Malformed)
    ];
    (
        prop_oneof![3 => Just(0), 1 => 1..4i32],
        output,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(code, output, optional)| Behaviour { code, output, optional })
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Migrate,
    Prepare,
    Stopped,
}

fn event(kind: Kind) -> QemuEvent {
    let (name, xml) = ("vm".to_owned(), "<domain/>".to_owned());
    match kind {
        Kind::Migrate => QemuEvent::Migrate { name, xml },
        Kind::Prepare => QemuEvent::Prepare { name, xml },
        Kind::Stopped => QemuEvent::Stopped { name, xml },
    }
}

/// What the model says: the input each hook reads, whether the event succeeded, and the
/// resulting document.
struct Expected {
    inputs: Vec<Vec<u8>>,
    succeeded: bool,
    document: Option<Vec<u8>>,
}

/// A filter stage that exits 0 but prints what is not a document with the input's root
/// element fails.
fn rejected(h: &Behaviour, filters: bool) -> bool {
    filters && h.code == 0 && matches!(h.output, Output::Malformed(_))
}

fn model(hooks: &[Behaviour], filters: bool) -> Expected {
    let original = b"<domain/>".to_vec();
    let mut current: Option<Vec<u8>> = None;
    let mut all_ok = true;
    let mut inputs = Vec::new();
    for h in hooks {
        let chained = filters && all_ok && current.is_some();
        inputs.push(if chained {
            current.clone().unwrap()
        } else {
            original.clone()
        });
        let out = h.output.bytes();
        if h.code == 0 && !rejected(h, filters) {
            if filters && !out.iter().all(u8::is_ascii_whitespace) {
                current = Some(out);
            }
        } else if !h.optional {
            all_ok = false;
        }
    }
    let succeeded = hooks
        .iter()
        .all(|h| (h.code == 0 && !rejected(h, filters)) || h.optional);
    let document = (filters && succeeded).then(|| current.unwrap_or(original));
    Expected {
        inputs,
        succeeded,
        document,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_registry_follows_the_model(
        hooks in prop::collection::vec(behaviour(), 0..8),
        kind in prop_oneof![Just(Kind::Migrate), Just(Kind::Prepare), Just(Kind::Stopped)],
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut builder = RegistryBuilder::new();
        for (i, h) in hooks.iter().enumerate() {
            let (seen, h2) = (Arc::clone(&seen), h.clone());
            let mock = MockHook::from_fn(format!("h{i}"), move |inv| {
                seen.lock().unwrap().push(inv.input().unwrap_or_default().to_vec());
                let out = HookOutcome::exited(h2.code).with_stdout(h2.output.bytes());
                async move { out }
            });
            let mock = if h.optional { mock.with_policy(HookPolicy::Optional) } else { mock.into() };
            builder = builder.hook(Driver::Qemu, mock);
        }
        let registry = builder.build();
        let ev = event(kind);
        let filters = matches!(kind, Kind::Migrate);
        let want = model(&hooks, filters);

        let fired = registry.fire_blocking(&ev);
        let fatal = !matches!(kind, Kind::Stopped);
        prop_assert_eq!(fired.is_err(), fatal && !want.succeeded, "Err exactly when the operation stops");
        let report: Report = fired.unwrap_or_else(HookFailure::into_report);
        prop_assert_eq!(report.hooks.len(), hooks.len(), "every hook runs");
        prop_assert_eq!(&*seen.lock().unwrap(), &want.inputs);
        prop_assert_eq!(report.succeeded(), want.succeeded);
        prop_assert_eq!(&report.document, &want.document);
        prop_assert_eq!(
            report.document_text().map(|d| d.into_owned().into_bytes()),
            want.document.clone()
        );
        for (rec, h) in report.hooks.iter().zip(&hooks) {
            prop_assert_eq!(rec.success, h.code == 0 && !rejected(h, filters));
            // A successful filter stage says what it did to the document.
            prop_assert_eq!(rec.document.is_some(), filters && rec.success);
            prop_assert_eq!(rec.optional, h.optional);
            if !filters {
                prop_assert_eq!(rec.input, InputSource::Original);
            }
        }
        // Reports survive JSON unchanged.
        let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        prop_assert_eq!(back, report);
    }
}
