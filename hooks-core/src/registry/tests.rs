//! The registry's tests.

mod firing {
    use super::super::*;
    use crate::testing::{MockHook, RecordingHook};
    use crate::{FailurePolicy, HookOutcome, QemuEvent, StatusRecord};

    fn migrate() -> QemuEvent {
        QemuEvent::Migrate {
            name: "vm".into(),
            xml: "<original/>".into(),
        }
    }

    fn printing(name: &str, code: i32, out: &'static str) -> MockHook {
        MockHook::always(name, move || HookOutcome::exited(code).with_stdout(out))
    }

    fn inputs(rec: &RecordingHook) -> Vec<String> {
        rec.calls()
            .iter()
            .map(|c| String::from_utf8_lossy(c.input.as_deref().unwrap_or(b"<null>")).into_owned())
            .collect()
    }

    #[test]
    fn runs_all_after_failure_and_reports_the_last_failure() {
        let registry = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                MockHook::always("a", || HookOutcome::exited(3).with_stderr("first")),
            )
            .hook(Driver::Qemu, MockHook::succeeding("b"))
            .hook(
                Driver::Qemu,
                MockHook::always("c", || HookOutcome::exited(1).with_stderr("second\n")),
            )
            .build();
        let err = registry
            .fire_blocking(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
            .unwrap_err();
        assert_eq!(err.report().hooks.len(), 3);
        assert_eq!(err.failed_hook().name, "c");
        assert_eq!(err.failures().count(), 2);
        assert_eq!(err.policy(), FailurePolicy::Abort);
        assert_eq!(
            err.to_string(),
            "Hook `c` (mock) failed at `vm start begin -`: returned status 1: second"
        );
    }

    #[test]
    fn filter_chain_follows_libvirt() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("main", 0, "<original id='1'/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .hook(Driver::Qemu, printing("empty", 0, "  \n"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .hook(Driver::Qemu, printing("two", 0, "<original id='2'/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .build();
        let report = registry.fire_blocking(&migrate()).unwrap();
        assert_eq!(
            inputs(&rec),
            ["<original id='1'/>", "<original id='1'/>", "<original id='2'/>"]
        );
        assert_eq!(report.document.as_deref(), Some(&b"<original id='2'/>"[..]));
        assert!(report.document_changed);
        assert_eq!(report.hooks[0].input, InputSource::Original);
        assert_eq!(report.hooks[1].input, InputSource::Chained);
    }

    #[test]
    fn after_a_failure_filters_get_the_original() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("one", 0, "<original id='1'/>"))
            .hook(Driver::Qemu, printing("fails", 1, "<ignored/>"))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .build();
        let err = registry.fire_blocking(&migrate()).unwrap_err();
        assert_eq!(inputs(&rec), ["<original/>"]);
        // A failed filter event has no resulting document to pick up by mistake.
        assert_eq!(err.report().document, None);
        assert_eq!(err.report().document_text(), None);
    }

    #[test]
    fn unchanged_document_is_the_original() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("quiet", 0, ""))
            .build();
        let report = registry.fire_blocking(&migrate()).unwrap();
        assert_eq!(report.document.as_deref(), Some(&b"<original/>"[..]));
        assert!(!report.document_changed);
    }

    #[test]
    fn truncated_filter_output_fails_the_hook() {
        let registry = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                MockHook::always("big", || {
                    let mut o = HookOutcome::success().with_stdout("<cut");
                    o.stdout_truncated = true;
                    o
                }),
            )
            .build();
        let err = registry.fire_blocking(&migrate()).unwrap_err();
        assert!(err.to_string().contains("output cap"), "{err}");
        assert_eq!(err.report().document, None);
    }

    #[test]
    fn hooks_only_see_their_driver_and_matching_events() {
        let qemu = Arc::new(RecordingHook::new("qemu-only"));
        let all = Arc::new(RecordingHook::new("all"));
        let registry = RegistryBuilder::new()
            .shared_hook(Some(Driver::Qemu), qemu.clone())
            .shared_hook(None, all.clone())
            .build();
        registry.fire_blocking(&crate::DaemonEvent::Start).unwrap();
        assert_eq!(qemu.calls().len(), 0);
        assert_eq!(all.calls().len(), 1);
        assert_eq!(all.calls()[0].input, None);
    }

    #[test]
    fn timeout_reaches_the_invocation() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .shared_hook(None, rec.clone())
            .timeout(Some(Duration::from_millis(250)))
            .build();
        registry.fire_blocking(&crate::DaemonEvent::Reload).unwrap();
        assert_eq!(rec.calls()[0].timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn report_round_trips_through_json() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, printing("p", 0, "<new/>"))
            .hook(
                Driver::Qemu,
                MockHook::always("t", || {
                    HookOutcome::new(crate::HookStatus::TimedOut(Duration::from_secs(2)))
                }),
            )
            .build();
        let report = registry.fire_blocking(&migrate()).unwrap_err().into_report();
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.hooks[1].status, StatusRecord::TimedOut { after_ms: 2000 });
        assert!(back.hooks[1].message.as_deref().unwrap().contains("timed out after 2s"));
    }

    /// A guest's domain XML, as libvirt passes it to a `migrate` or `restore` hook.
    const GUEST: &str =
        "<domain type='kvm'>\n  <name>vm1</name>\n  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>\n</domain>\n";

    /// A filter that rewrites what it reads with `edit`.
    fn rewriting(name: &str, edit: fn(&str) -> String) -> MockHook {
        MockHook::from_fn(name, move |inv| {
            let xml = String::from_utf8_lossy(inv.input().unwrap_or_default()).into_owned();
            std::future::ready(HookOutcome::success().with_stdout(edit(&xml)))
        })
    }

    #[test]
    fn a_filter_that_renames_the_guest_fails_named_and_is_not_chained() {
        let rec = Arc::new(RecordingHook::new("rec"));
        let registry = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                rewriting("10-upper-uuid", |xml| {
                    xml.replace(
                        "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
                        "C7A5FDBDCDAF9455926AD65C16DB1809",
                    )
                }),
            )
            .hook(Driver::Qemu, rewriting("20-rename", |xml| xml.replace("vm1", "vm2")))
            .shared_hook(Some(Driver::Qemu), rec.clone())
            .build();
        for event in [
            QemuEvent::Migrate {
                name: "vm1".into(),
                xml: GUEST.into(),
            },
            QemuEvent::Restore {
                name: "vm1".into(),
                xml: GUEST.into(),
            },
        ] {
            let failure = registry.fire_blocking(&event).unwrap_err();
            let report = failure.report();
            // The UUID in another form libvirt reads is the same UUID: chained.
            assert!(
                report.hooks[0].success && report.hooks[0].replaced_document,
                "{:?}",
                report.hooks[0]
            );
            let renamed = &report.hooks[1];
            assert!(!renamed.success && !renamed.replaced_document);
            assert_eq!(renamed.failure, Some(crate::Failure::BadOutput));
            let why = renamed.rejected_output.as_deref().unwrap_or_default();
            assert!(
                why.starts_with("its output renames the domain `vm1` to `vm2`: libvirt refuses a migrate or restore document whose name or UUID changed"),
                "{why}"
            );
            assert_eq!(failure.failed_hook().name, "20-rename");
            let op = event.op();
            assert!(
                failure.to_string().starts_with(&format!(
                    "Hook `20-rename` (mock) failed at `vm1 {op} begin -`: output: its output renames the domain `vm1` to `vm2`"
                )),
                "{failure}"
            );
            // The next stage reads the original, as after any failure.
            assert_eq!(inputs(&rec).last().map(String::as_str), Some(GUEST));
            assert_eq!(report.document, None);
        }
    }

    #[test]
    fn a_filter_that_drops_the_uuid_fails() {
        let registry = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                rewriting("strip", |xml| {
                    xml.replace("  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>\n", "")
                }),
            )
            .build();
        let event = QemuEvent::Migrate {
            name: "vm1".into(),
            xml: GUEST.into(),
        };
        let failure = registry.fire_blocking(&event).unwrap_err();
        assert!(
            failure
                .to_string()
                .contains("its output has no <uuid> (the input's is `c7a5fdbd-cdaf-9455-926a-d65c16db1809`)"),
            "{failure}"
        );
    }

    #[test]
    fn a_document_printed_where_libvirt_ignores_output_is_a_warning() {
        let registry = RegistryBuilder::new()
            .hook(
                Driver::Qemu,
                printing("echoes", 0, "\n  <domain><name>vm2</name></domain>\n"),
            )
            .hook(Driver::Qemu, printing("progress", 0, "configuring vm1: done\n"))
            .hook(Driver::Qemu, printing("quiet", 0, " \n"))
            .hook(Driver::Qemu, printing("fails", 1, "<domain/>"))
            .build();
        let event = QemuEvent::Prepare {
            name: "vm1".into(),
            xml: GUEST.into(),
        };
        let report = registry.fire_blocking(&event).unwrap_err().into_report();
        let warned = &report.hooks[0];
        assert!(warned.success, "a warning, not a failure: {warned:?}");
        assert_eq!(
            warned.warnings,
            ["it printed a document (37 bytes) at `prepare`, where libvirt ignores a hook's output: only `migrate` and `restore` take a new document"]
        );
        assert!(report.hooks[1].warnings.is_empty() && report.hooks[2].warnings.is_empty());
        // Failed or not, what it printed went nowhere.
        assert_eq!(report.hooks[3].warnings.len(), 1, "{:?}", report.hooks[3]);
        assert_eq!(report.document, None);
        // At a filter event the same output is the new document, with no such warning.
        let event = QemuEvent::Migrate {
            name: "vm1".into(),
            xml: GUEST.into(),
        };
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, rewriting("keeps", |xml| xml.replace("kvm", "qemu")))
            .build();
        let report = registry.fire_blocking(&event).unwrap();
        assert!(report.hooks[0].replaced_document && report.hooks[0].warnings.is_empty());
        // A daemon event takes no document either.
        let registry = RegistryBuilder::new()
            .hook(Driver::Daemon, printing("d", 0, "<x/>"))
            .build();
        let report = registry.fire_blocking(&crate::DaemonEvent::Reload).unwrap();
        assert!(
            report.hooks[0].warnings[0].starts_with("it printed a document (4 bytes) at `reload`"),
            "{:?}",
            report.hooks[0]
        );
    }

    fn hangs(name: &str) -> MockHook {
        MockHook::from_fn(name, |_| std::future::pending())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hanging_custom_hook_times_out_on_a_current_thread_runtime() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, hangs("hangs"))
            .hook(Driver::Qemu, MockHook::succeeding("after"))
            .timeout(Some(Duration::from_millis(50)))
            .build();
        let err = registry
            .fire(&QemuEvent::Prepare {
                name: "vm".into(),
                xml: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.failed_hook().name, "hangs");
        assert_eq!(err.failed_hook().status, StatusRecord::TimedOut { after_ms: 50 });
        assert_eq!(
            err.failed_hook().failure,
            Some(crate::Failure::Timeout),
            "its own limit"
        );
        assert!(err.report().hooks[1].success, "the hooks after it still run");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hooks_past_the_event_budget_are_not_started_and_fail_the_event() {
        let late = Arc::new(RecordingHook::new("late"));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, hangs("slow"))
            .shared_hook(Some(Driver::Qemu), late.clone())
            .hook(
                Driver::Qemu,
                MockHook::succeeding("optional-late").with_policy(crate::HookPolicy::Optional),
            )
            .event_timeout(Some(Duration::from_millis(60)))
            .build();
        let err = registry
            .fire(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
            .await
            .unwrap_err();
        let hooks = &err.report().hooks;
        // Its limit was what was left of the budget.
        assert!(
            matches!(hooks[0].status, StatusRecord::TimedOut { after_ms: 1..=60 }),
            "{:?}",
            hooks[0].status
        );
        // Cut by the budget, not by a limit of its own: told apart, typed.
        assert_eq!(hooks[0].failure, Some(crate::Failure::Budget));
        assert!(hooks[0]
            .warnings
            .iter()
            .any(|w| w.contains("the event's time budget (60ms)")));
        assert_eq!(hooks[1].failure, Some(crate::Failure::Budget), "not started");
        assert!(late.calls().is_empty(), "not started");
        assert!(
            hooks[1]
                .message
                .as_deref()
                .unwrap()
                .contains("not started: the event's time budget of 60ms ran out"),
            "{:?}",
            hooks[1].message
        );
        assert_eq!(err.failed_hook().name, "late", "the last required failure is reported");
        assert!(
            hooks[2].optional && !hooks[2].success,
            "an optional hook is recorded too"
        );
    }

    #[test]
    fn the_budget_also_holds_without_a_runtime() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Daemon, hangs("slow"))
            .event_timeout(Some(Duration::from_millis(30)))
            .build();
        let report = registry.fire_blocking(&crate::DaemonEvent::Start).unwrap();
        assert!(!report.succeeded(), "daemon failures are ignored but recorded");
        assert!(matches!(
            report.hooks[0].status,
            StatusRecord::TimedOut { after_ms: 1..=30 }
        ));
        assert_eq!(report.hooks[0].failure, Some(crate::Failure::Budget));
    }

    /// A layer's wrapper forwards the call and the name only, as a hand-written one
    /// would: the hook stays optional and keeps its matching (a wrapper that forgot to
    /// forward `policy` made an optional hook required).
    #[test]
    fn a_layer_cannot_change_which_events_a_hook_takes_or_whether_its_failure_counts() {
        struct Bare(Arc<dyn Hook>);
        #[async_trait::async_trait]
        impl Hook for Bare {
            fn name(&self) -> &str {
                self.0.name()
            }
            async fn call(&self, inv: &Invocation) -> HookOutcome {
                self.0.call(inv).await
            }
        }
        struct BareLayer;
        impl crate::layer::Layer for BareLayer {
            fn layer(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
                Arc::new(Bare(hook))
            }
        }
        let flaky = MockHook::always("flaky", || HookOutcome::exited(1));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, flaky.with_policy(crate::HookPolicy::Optional))
            .hook(
                Driver::Qemu,
                MockHook::always("stop-only", || HookOutcome::exited(1)).matching(|e| e.op() == "stopped"),
            )
            .layer(BareLayer)
            .build();
        let report = registry
            .fire_blocking(&QemuEvent::Prepare {
                name: "vm".into(),
                xml: String::new(),
            })
            .unwrap();
        assert_eq!(report.hooks.len(), 1, "stop-only does not take prepare");
        assert!(report.hooks[0].optional && !report.hooks[0].success);
    }

    /// Each way to fail is a variant a caller can match, and in the report's JSON.
    #[test]
    fn failures_are_typed_end_to_end() {
        let registry = RegistryBuilder::new()
            .hook(Driver::Daemon, MockHook::succeeding("ok"))
            .hook(Driver::Daemon, MockHook::always("refuses", || HookOutcome::exited(3)))
            .hook(
                Driver::Daemon,
                MockHook::always("signaled", || HookOutcome::new(HookStatus::Signaled(9))),
            )
            .hook(
                Driver::Daemon,
                MockHook::always("cancelled", || HookOutcome::failed(HookError::Cancelled)),
            )
            .hook(
                Driver::Daemon,
                MockHook::always("unloadable", || {
                    HookOutcome::failed(HookError::from(crate::LoadError::new(
                        "/x.wasm",
                        "wasm",
                        crate::LoadErrorKind::InvalidModule,
                    )))
                }),
            )
            .hook(
                Driver::Daemon,
                MockHook::from_fn("panics", |_| async { panic!("boom") }),
            )
            .build();
        let report = registry.fire_blocking(&crate::DaemonEvent::Start).unwrap();
        let failures: Vec<_> = report.hooks.iter().map(|r| r.failure).collect();
        use crate::Failure::*;
        assert_eq!(
            failures,
            [
                None,
                Some(Refused),
                Some(Crashed),
                Some(Cancelled),
                Some(Load),
                Some(Crashed)
            ]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["hooks"][1]["failure"], "refused");
        assert!(json["hooks"][0].get("failure").is_none());
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.hooks[3].failure, Some(Cancelled));
    }

    #[test]
    fn layers_wrap_every_hook_first_added_outermost_inside_the_limits() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let tag = |name: &'static str| {
            let order = Arc::clone(&order);
            crate::layer::from_fn(move |hook, inv| {
                order.lock().unwrap().push(format!("{name}:{}", hook.name()));
                async move { hook.call(&inv).await }
            })
        };
        let loud = MockHook::always("loud", || HookOutcome::success().with_stderr(vec![b'x'; 64]));
        let registry = RegistryBuilder::new()
            .hook(Driver::Qemu, loud)
            .layer(tag("outer"))
            .layer(tag("inner"))
            .max_output(Some(8))
            .build();
        let report = registry
            .fire_blocking(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
            .unwrap();
        assert_eq!(*order.lock().unwrap(), ["outer:loud", "inner:loud"]);
        assert_eq!(report.hooks[0].stderr.len(), 8, "the cap applies outside the layers");
        assert!(report.hooks[0].stderr_truncated);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reload_does_not_wait_for_a_running_fire() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let registry = Arc::new(
            RegistryBuilder::new()
                .hook(
                    Driver::Qemu,
                    MockHook::always("blocks", move || {
                        rx.lock().unwrap().recv().unwrap();
                        HookOutcome::success()
                    }),
                )
                .build(),
        );
        let r = Arc::clone(&registry);
        let running = tokio::task::spawn_blocking(move || {
            r.fire_blocking(&QemuEvent::Start {
                name: "vm".into(),
                xml: String::new(),
            })
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        registry.reload(); // would deadlock here if reload waited for the fire
        tx.send(()).unwrap();
        assert!(running.await.unwrap().is_ok());
    }
}

mod compiled_tests {
    use crate::testing::RecordingHook;
    use crate::{compiled_hook, DaemonEvent, RegistryBuilder};

    compiled_hook!(name: "z-late", drivers: [], order: 5, hook: RecordingHook::new("z-late"));
    compiled_hook!(name: "a-early", drivers: [Daemon], order: -5, hook: RecordingHook::new("a-early"));
    compiled_hook!(name: "b-same-order", drivers: [Daemon, Qemu], order: 5, hook: RecordingHook::new("b-same-order"));

    #[test]
    fn compiled_hooks_run_by_order_then_name() {
        let registry = RegistryBuilder::new().compiled_hooks().build();
        let report = registry.fire_blocking(&DaemonEvent::Start).unwrap();
        let names: Vec<_> = report.hooks.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a-early", "b-same-order", "z-late"]);
    }

    #[test]
    fn an_executable_that_no_linked_backend_runs_fails_the_event() {
        use std::os::unix::fs::PermissionsExt;
        // No backend is linked into hooks-core's tests: a deny script must not be skipped.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("qemu.d")).unwrap();
        let deny = tmp.path().join("qemu.d/10-deny");
        std::fs::write(&deny, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&deny, std::fs::Permissions::from_mode(0o755)).unwrap();
        let registry = RegistryBuilder::new()
            .hooks_dir_with(crate::HooksDir::with_loaders(tmp.path(), vec![]))
            .build();
        let ev = crate::QemuEvent::Prepare {
            name: "vm".into(),
            xml: "<domain/>".into(),
        };
        let failure = registry.fire_blocking(&ev).unwrap_err();
        assert!(failure.is_fatal());
        assert!(failure.to_string().contains("virt_hooks_exec::link()"), "{failure}");
    }

    /// A program that linked only the exec backend allowed a start with a 0644 `.wasm`
    /// or `.so` in `qemu.d/` ("not executable", 0 hooks ran).
    #[test]
    fn a_module_or_native_plugin_whose_backend_is_not_linked_fails_the_event() {
        use std::os::unix::fs::PermissionsExt;
        for (file, link) in [
            ("10-deny.wasm", "virt_hooks_wasm::link()"),
            ("10-deny.so", "virt_hooks_dylib::link()"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir(tmp.path().join("qemu.d")).unwrap();
            let path = tmp.path().join("qemu.d").join(file);
            std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let dir = crate::HooksDir::with_loaders(tmp.path(), vec![]);
            assert!(dir.is_present(crate::Driver::Qemu), "{file}: not present");
            let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
            let ev = crate::QemuEvent::Prepare {
                name: "vm".into(),
                xml: "<domain/>".into(),
            };
            let failure = registry.fire_blocking(&ev).unwrap_err();
            let text = crate::error::chain(&failure);
            assert!(text.contains(file) && text.contains(link), "{file}: {text}");
        }
    }

    /// What `cc -shared` makes has its execute bit: a program with only the exec backend
    /// exec'd it, and the event failed with SIGSEGV, naming no backend to link.
    #[test]
    fn an_executable_module_or_plugin_is_not_taken_for_a_script() {
        use std::os::unix::fs::PermissionsExt;
        #[derive(Debug)]
        struct ExecLike;
        impl crate::backend::HookLoader for ExecLike {
            fn backend(&self) -> &'static str {
                "exec"
            }
            fn priority(&self) -> i32 {
                100
            }
            fn claims(&self, _path: &std::path::Path, meta: &std::fs::Metadata) -> bool {
                meta.permissions().mode() & 0o111 != 0
            }
            fn load(
                &self,
                _path: &std::path::Path,
                _settings: &crate::backend::HookSettings,
            ) -> Result<std::sync::Arc<dyn crate::Hook>, crate::LoadError> {
                Ok(std::sync::Arc::new(crate::testing::MockHook::succeeding("exec'd")))
            }
        }
        for (file, link) in [
            ("10-deny.so", "virt_hooks_dylib::link()"),
            ("10-deny.wasm", "virt_hooks_wasm::link()"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir(tmp.path().join("qemu.d")).unwrap();
            let path = tmp.path().join("qemu.d").join(file);
            std::fs::write(&path, b"\x7fELF").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            let dir = crate::HooksDir::with_loaders(tmp.path(), vec![std::sync::Arc::new(ExecLike)]);
            let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
            let ev = crate::QemuEvent::Prepare {
                name: "vm".into(),
                xml: "<domain/>".into(),
            };
            let failure = registry.fire_blocking(&ev).unwrap_err();
            let text = crate::error::chain(&failure);
            assert!(text.contains(link), "{file}: {text}");
            assert!(
                !failure.report().hooks.iter().any(|h| h.name == "exec'd"),
                "{file} was exec'd"
            );
        }
    }
}

mod loading_tests {
    use std::fs::{self, Metadata};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    use crate::testing::MockHook;
    use crate::{
        Driver, Hook, HookLoader, HookSettings, HooksDir, LoadError, LoadErrorKind, QemuEvent, RawEvent,
        RegistryBuilder,
    };

    /// Claims executables; fails on `broken*`, blocks on `slow*` until the gate opens.
    #[derive(Default)]
    struct TestLoader {
        loads: AtomicUsize,
        gate: Option<(mpsc::SyncSender<()>, Mutex<mpsc::Receiver<()>>)>,
    }

    impl HookLoader for TestLoader {
        fn backend(&self) -> &'static str {
            "test"
        }
        fn claims(&self, _path: &Path, meta: &Metadata) -> bool {
            meta.permissions().mode() & 0o111 != 0
        }
        fn load(&self, path: &Path, _settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("broken") {
                return Err(LoadError::new(path, "test", LoadErrorKind::InvalidModule));
            }
            if let (true, Some((entered, gate))) = (name.starts_with("slow"), &self.gate) {
                entered.send(()).unwrap();
                gate.lock().unwrap().recv().unwrap();
            }
            Ok(Arc::new(MockHook::succeeding(name)))
        }
    }

    fn executable(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn prepare(driver: Driver) -> RawEvent {
        RawEvent::new(driver, ["vm", "prepare", "begin", "-"]).with_input(Some(b"<domain/>".to_vec()))
    }

    #[test]
    fn a_hook_that_fails_to_load_keeps_its_sidecar_settings() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/broken-optional"));
        fs::write(
            tmp.path().join("qemu.d/broken-optional.toml"),
            "policy = \"optional\"\n",
        )
        .unwrap();
        executable(&tmp.path().join("qemu.d/broken-at-release"));
        fs::write(
            tmp.path().join("qemu.d/broken-at-release.toml"),
            "[match]\nops = [\"release\"]\n",
        )
        .unwrap();
        let loader = Arc::new(TestLoader::default());
        let dir = HooksDir::with_loaders(tmp.path(), vec![loader]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        let report = registry
            .fire_blocking(&prepare(Driver::Qemu))
            .expect("an optional broken hook does not fail the event");
        assert_eq!(report.hooks.len(), 1, "the one matching only `release` is not called");
        assert!(report.hooks[0].optional && !report.hooks[0].success);
        assert!(report.hooks[0]
            .message
            .as_deref()
            .unwrap()
            .contains("invalid WebAssembly"));
    }

    #[test]
    fn an_unchanged_sidecar_keeps_the_loaded_hook_and_a_changed_one_reloads_it() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/10-hook"));
        let sidecar = tmp.path().join("qemu.d/10-hook.toml");
        fs::write(&sidecar, "timeout = 5\n").unwrap();
        let loader = Arc::new(TestLoader::default());
        let dir = HooksDir::with_loaders(tmp.path(), vec![loader.clone()]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        for _ in 0..3 {
            registry.fire_blocking(&prepare(Driver::Qemu)).unwrap();
        }
        assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
        fs::write(&sidecar, "timeout = 10\npolicy = \"optional\"\n").unwrap();
        registry.fire_blocking(&prepare(Driver::Qemu)).unwrap();
        assert_eq!(
            loader.loads.load(Ordering::SeqCst),
            2,
            "a changed sidecar reloads the hook"
        );
    }

    #[test]
    fn a_slow_load_does_not_hold_up_other_events() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/slow"));
        executable(&tmp.path().join("lxc.d/fast"));
        let (entered_tx, entered) = mpsc::sync_channel(1);
        let (open_gate, gate) = mpsc::channel();
        let loader = Arc::new(TestLoader {
            gate: Some((entered_tx, Mutex::new(gate))),
            ..TestLoader::default()
        });
        let dir = HooksDir::with_loaders(tmp.path(), vec![loader]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        let r = registry.clone();
        let slow = std::thread::spawn(move || r.fire_blocking(&prepare(Driver::Qemu)).is_ok());
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        // While qemu's hook is loading, an lxc event loads and runs its own.
        let (done_tx, done) = mpsc::channel();
        let r = registry.clone();
        std::thread::spawn(move || done_tx.send(r.fire_blocking(&prepare(Driver::Lxc)).is_ok()));
        let fast = done.recv_timeout(Duration::from_secs(10));
        open_gate.send(()).unwrap();
        assert_eq!(fast, Ok(true), "the lxc event waited for qemu's load");
        assert!(slow.join().unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hooks_dir_works_on_a_current_thread_runtime() {
        let tmp = tempfile::tempdir().unwrap();
        executable(&tmp.path().join("qemu.d/10-hook"));
        let dir = HooksDir::with_loaders(tmp.path(), vec![Arc::new(TestLoader::default())]).with_trust(None);
        let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
        let report = registry
            .fire(&QemuEvent::Prepare {
                name: "vm".into(),
                xml: "<domain/>".into(),
            })
            .await
            .unwrap();
        assert_eq!(report.hooks.len(), 1);
    }
}
