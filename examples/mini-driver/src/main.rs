//! Runs the toy driver against the sample hooks dir: `cargo run -p mini-driver`.

use std::path::PathBuf;
use std::time::Duration;

use mini_driver::{AuditTrail, MiniDriver};
use virt_hooks_core::RegistryBuilder;

#[tokio::main]
async fn main() {
    virt_hooks_exec::link();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let hooks_dir = std::env::args()
        .nth(1)
        .map_or_else(|| examples.join("hooks"), PathBuf::from);
    let read =
        |name: &str| std::fs::read_to_string(examples.join(name)).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
    let registry = RegistryBuilder::new()
        .compiled_hooks()
        .hooks_dir(&hooks_dir)
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let driver = MiniDriver::new(registry);
    println!("mini-driver with hooks from {}", hooks_dir.display());

    driver.define("demo", &read("domain.xml"));
    driver.define("nobody", &read("domain-no-owner.xml"));
    for name in ["demo", "nobody"] {
        match driver.start(name).await {
            Ok(seq) => println!("start {name}: running ({} hook events)", seq.steps.len()),
            Err(e) => println!("start {name}: refused\n  {e}"),
        }
    }
    match driver.destroy("demo").await {
        Ok(_) => println!("destroy demo: off"),
        Err(e) => println!("destroy demo: {e}"),
    }
    match driver
        .migrate_in(
            "incoming",
            &read("domain.xml").replace("<name>demo<", "<name>incoming<"),
        )
        .await
    {
        Ok(_) => {
            let xml = driver.xml("incoming").unwrap_or_default();
            let bridge = xml.lines().find(|l| l.contains("bridge=")).unwrap_or("").trim();
            println!("migrate-in incoming: running with {bridge}");
        }
        Err(e) => println!("migrate-in incoming: refused\n  {e}"),
    }
    for name in ["incoming"] {
        let _ = driver.destroy(name).await;
    }
    for line in driver.actions.lock().unwrap().iter() {
        println!("  driver did: {line}");
    }
    let trail = AuditTrail::entries();
    println!(
        "compiled-in audit trail saw {} hook events, first: {}",
        trail.len(),
        trail.first().map_or("-", String::as_str)
    );
}
