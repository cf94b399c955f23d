//! A native filter plugin in Rust: at `migrate` and `restore`, moves the guest's bridged
//! interfaces from the bridge `from` to the bridge `to`, both from its sidecar's
//! `[config]`, and logs how many it moved.
//!
//! ```toml
//! # 40-bridge-rewrite.so.toml
//! [config]
//! from = "br-old"
//! to = "br0"
//! ```
//!
//! Build with `cargo build --release -p bridge-rewrite-plugin` and copy
//! `target/release/libbridge_rewrite_plugin.so` to
//! `/etc/libvirt/hooks/qemu.plugins/40-bridge-rewrite.so`, the sidecar beside it. Only the
//! `bridge` attributes change: the rest of the document is passed on byte for byte.

use std::io::Write;

use virt_hooks_plugin::{export_hook, FromConfig, Init, Invocation, Plugin};

/// The plugin, made from its `[config]` when it is loaded.
#[derive(Debug)]
pub struct BridgeRewrite {
    from: String,
    to: String,
}

impl FromConfig for BridgeRewrite {
    fn from_config(init: &Init<'_>) -> Result<Self, String> {
        let get = |key: &str| {
            init.config(key)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("[config] {key} is not set (the bridge to move interfaces {key})"))
        };
        let (from, to) = (get("from")?, get("to")?);
        if from == to {
            return Err(format!("[config] from and to are both `{from}`"));
        }
        Ok(BridgeRewrite { from, to })
    }
}

/// `xml` with every `<interface type='bridge'>`'s `<source bridge=from>` of the domain's
/// devices pointing at `to`, and how many moved; `None` when it is not a domain.
pub fn rewrite(xml: &str, from: &str, to: &str) -> Option<(String, usize)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let domain = doc.root_element();
    if domain.tag_name().name() != "domain" {
        return None;
    }
    let mut ranges: Vec<std::ops::Range<usize>> = domain
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|devices| devices.children())
        .filter(|n| n.has_tag_name("interface") && n.attribute("type") == Some("bridge"))
        .flat_map(|interface| interface.children())
        .filter(|n| n.has_tag_name("source"))
        .filter_map(|source| source.attribute_node("bridge"))
        .filter(|bridge| bridge.value() == from)
        .map(|bridge| bridge.range_value())
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(xml.len());
    let mut at = 0;
    for range in &ranges {
        out.push_str(&xml[at..range.start]);
        out.push_str(to);
        at = range.end;
    }
    out.push_str(&xml[at..]);
    Some((out, ranges.len()))
}

impl Plugin for BridgeRewrite {
    const NAME: &'static std::ffi::CStr = c"bridge-rewrite";

    fn call(&self, inv: &Invocation<'_>) -> i32 {
        if !matches!((&*inv.op(), &*inv.subop()), ("migrate" | "restore", "begin")) {
            return 0;
        }
        let xml = inv.input_str();
        match rewrite(&xml, &self.from, &self.to) {
            None => {
                inv.warn("the input is not a domain document: left as it is");
                0
            }
            Some((_, 0)) => {
                inv.debug(&format!("no interface on {}", self.from));
                0
            }
            Some((new, moved)) => {
                inv.info(&format!("moved {moved} interface(s) from {} to {}", self.from, self.to));
                if inv.stdout().write_all(new.as_bytes()).is_err() {
                    inv.error("could not write the new document");
                    return 1;
                }
                0
            }
        }
    }
}

export_hook!(BridgeRewrite from_config);

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn only_the_bridge_attributes_of_bridged_interfaces_change() {
        let xml = "<domain>\n  <name>br-old</name>\n  <devices>\n    <interface type='bridge'><source bridge='br-old'/></interface>\n    <interface type='network'><source network='br-old' bridge='br-old'/></interface>\n    <interface type=\"bridge\">\n      <source bridge=\"br-old\"/>\n    </interface>\n  </devices>\n</domain>\n";
        let (new, moved) = rewrite(xml, "br-old", "br0").unwrap();
        assert_eq!(moved, 2);
        assert_eq!(
            new,
            xml.replacen(
                "bridge='br-old'/></interface>\n    <interface type='network'",
                "bridge='br0'/></interface>\n    <interface type='network'",
                1
            )
            .replace("bridge=\"br-old\"", "bridge=\"br0\"")
        );
        assert!(new.contains("<name>br-old</name>"), "{new}");
        assert_eq!(rewrite("<network/>", "a", "b"), None);
        assert_eq!(rewrite("not xml", "a", "b"), None);
    }
}
