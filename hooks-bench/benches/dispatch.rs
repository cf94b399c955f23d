//! Criterion benches: registry overhead with mocks, exec dispatch vs a raw spawn.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hooks_bench::{domain_xml, exec_registry, mock_registry, prepare_event, raw_spawn, Scripts, TRIVIAL_SCRIPT};

fn registry_overhead(c: &mut Criterion) {
    let ev = prepare_event();
    let mut group = c.benchmark_group("mock_fire");
    for n in [0usize, 1, 10, 100] {
        let registry = mock_registry(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| registry.fire_blocking(&ev).is_ok())
        });
    }
    group.finish();
}

fn exec_vs_raw(c: &mut Criterion) {
    let scripts = Scripts::new().expect("fixture dir");
    let path = scripts.script("qemu", TRIVIAL_SCRIPT).expect("script");
    let ev = prepare_event();
    let xml = domain_xml();
    let registry = exec_registry(&path, None);
    let mut group = c.benchmark_group("exec_one_script");
    group.sample_size(30);
    group.bench_function("registry", |b| b.iter(|| registry.fire_blocking(&ev).is_ok()));
    group.bench_function("raw_std_command", |b| b.iter(|| raw_spawn(&path, xml.as_bytes())));
    group.finish();
}

criterion_group!(benches, registry_overhead, exec_vs_raw);
criterion_main!(benches);
