//! A native hook plugin in Rust: refuses to `prepare` a guest whose `<memory>` exceeds
//! [`LIMIT_KIB`], reading the domain XML with a real XML parser.
//!
//! Build with `cargo build --release -p memory-limit-plugin` and copy
//! `target/release/libmemory_limit_plugin.so` to `/etc/libvirt/hooks/qemu.plugins/50-memory-limit.so`
//! on a libvirt host (hookctl's dispatcher runs it), or to `qemu.d/` of the hooks dir of a
//! driver that embeds `virt-hooks-dylib`.

use std::io::Write;

use virt_hooks_plugin::{export_hook, Invocation, Plugin};

/// The largest guest this host accepts: 16 GiB.
pub const LIMIT_KIB: u64 = 16 * 1024 * 1024;

/// The plugin.
#[derive(Debug)]
pub struct MemoryLimit;

/// A `<memory>` value in KiB, from libvirt's units (default KiB).
pub fn to_kib(value: u64, unit: &str) -> Option<u64> {
    let factor: u64 = match unit {
        "b" | "bytes" => return Some(value / 1024),
        "KB" => return Some(value * 1000 / 1024),
        "k" | "KiB" => 1,
        "MB" => return Some(value * 1_000_000 / 1024),
        "M" | "MiB" => 1024,
        "GB" => return Some(value * 1_000_000_000 / 1024),
        "G" | "GiB" => 1024 * 1024,
        "TB" => return Some(value.checked_mul(1_000_000_000_000)? / 1024),
        "T" | "TiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    value.checked_mul(factor)
}

/// The guest's memory in KiB; `Err` says why it could not be read.
pub fn memory_kib(xml: &str) -> Result<u64, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("domain XML does not parse: {e}"))?;
    let memory = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("memory"))
        .ok_or("domain XML has no <memory> element")?;
    let text = memory.text().unwrap_or("").trim();
    let value: u64 = text
        .parse()
        .map_err(|_| format!("<memory> is not a number: `{text}`"))?;
    let unit = memory.attribute("unit").unwrap_or("KiB");
    to_kib(value, unit).ok_or_else(|| format!("<memory> has an unknown unit `{unit}`"))
}

impl Plugin for MemoryLimit {
    const NAME: &'static std::ffi::CStr = c"memory-limit";

    fn call(&self, inv: &Invocation<'_>) -> i32 {
        if inv.op() != "prepare" {
            return 0;
        }
        match memory_kib(&inv.input_str()) {
            Ok(kib) if kib > LIMIT_KIB => {
                let _ = writeln!(
                    inv.stderr(),
                    "guest '{}' asks for {} MiB of memory; this host allows at most {} MiB",
                    inv.object(),
                    kib / 1024,
                    LIMIT_KIB / 1024
                );
                1
            }
            Ok(_) => 0,
            Err(why) => {
                let _ = writeln!(inv.stderr(), "guest '{}': {why}", inv.object());
                1
            }
        }
    }
}

export_hook!(MemoryLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units() {
        let xml = |m: &str| format!("<domain><name>a</name>{m}</domain>");
        assert_eq!(memory_kib(&xml("<memory unit='GiB'>2</memory>")), Ok(2 * 1024 * 1024));
        assert_eq!(memory_kib(&xml("<memory>1024</memory>")), Ok(1024));
        assert_eq!(memory_kib(&xml("<memory unit='MiB'>64</memory>")), Ok(64 * 1024));
        assert!(memory_kib(&xml("")).unwrap_err().contains("no <memory>"));
        assert!(memory_kib("<domain>").unwrap_err().contains("does not parse"));
    }
}
