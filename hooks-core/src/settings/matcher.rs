//! [`Matcher`]: which events a hook wants, by globs and XPath.

use super::*;

/// Which events a hook wants; empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub(super) objects: Vec<glob::Pattern>,
    pub(super) ops: Vec<glob::Pattern>,
    pub(super) subops: Vec<glob::Pattern>,
    pub(super) xpath: Vec<XPath>,
    /// Prefixes for `xpath`: (prefix, namespace URI), sorted by prefix.
    pub(super) xmlns: Vec<(String, String)>,
}

impl Matcher {
    /// Whether the event passes every non-empty list: its object, op and subop match
    /// one of the globs, and every `xpath` expression holds on its input (see [`XPath`];
    /// an event without an XML document never passes a non-empty `xpath`; XML past the
    /// parser's limits passes it, failing closed: see [`crate::backend::XPath::holds`]).
    ///
    /// The globs are tested first; the input is parsed only when they pass, and only
    /// once for all hooks when the event comes from the registry
    /// ([`HookEvent::input_document`]).
    pub fn matches(&self, event: &dyn HookEvent) -> bool {
        let any = |pats: &[glob::Pattern], s: &str| pats.is_empty() || pats.iter().any(|p| p.matches(s));
        any(&self.objects, event.object())
            && any(&self.ops, event.op())
            && any(&self.subops, event.subop())
            && self.document_matches(event)
    }

    fn document_matches(&self, event: &dyn HookEvent) -> bool {
        if self.xpath.is_empty() {
            return true;
        }
        let all = |doc: &EventDocument<'_>| self.xpath.iter().all(|x| x.holds(doc, &self.xmlns));
        match event.input_document() {
            Some(shared) => all(shared),
            None => all(&EventDocument::new(event.input())),
        }
    }

    /// Checks that every `ops` and `subops` pattern can match something the driver
    /// calls: `ops = ["prepar"]` would silently never run the hook.
    ///
    /// # Errors
    /// The key (`ops` or `subops`), and which pattern matches nothing and what would.
    pub fn check_for(&self, driver: crate::Driver) -> Result<(), (&'static str, String)> {
        let ops = crate::libvirt_ops(driver);
        for pat in &self.ops {
            if !ops.iter().any(|op| pat.matches(op)) {
                let message = format!(
                    "ops: `{}` matches no {driver} operation (there are: {})",
                    pat.as_str(),
                    ops.join(", ")
                );
                return Err(("ops", message));
            }
        }
        for pat in &self.subops {
            if !["begin", "end", "-"].iter().any(|s| pat.matches(s)) {
                let message = format!("subops: `{}` matches no subop (there are: begin, end, -)", pat.as_str());
                return Err(("subops", message));
            }
        }
        if driver == crate::Driver::Daemon && !self.xpath.is_empty() {
            let message = "xpath: daemon events carry no document (their hooks read /dev/null), \
                           so this hook would never run"
                .to_owned();
            return Err(("xpath", message));
        }
        Ok(())
    }

    /// The `objects` globs, as written.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        self.objects.iter().map(glob::Pattern::as_str)
    }

    /// The `ops` globs, as written.
    pub fn ops(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(glob::Pattern::as_str)
    }

    /// The `subops` globs, as written.
    pub fn subops(&self) -> impl Iterator<Item = &str> {
        self.subops.iter().map(glob::Pattern::as_str)
    }

    /// The `xpath` expressions, as written.
    pub fn xpath(&self) -> impl Iterator<Item = &str> {
        self.xpath.iter().map(XPath::as_str)
    }

    /// The `xmlns` prefixes for `xpath`: (prefix, namespace URI), sorted by prefix.
    pub fn xmlns(&self) -> impl Iterator<Item = (&str, &str)> {
        self.xmlns.iter().map(|(p, u)| (p.as_str(), u.as_str()))
    }

    /// Whether it matches only events whose input is an XML document (it has `xpath`):
    /// never a daemon event, nor one without a well-formed document.
    pub fn needs_document(&self) -> bool {
        !self.xpath.is_empty()
    }

    /// Whether it matches everything.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.ops.is_empty() && self.subops.is_empty() && self.xpath.is_empty()
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, pats) in [("objects", &self.objects), ("ops", &self.ops), ("subops", &self.subops)] {
            if !pats.is_empty() {
                let list: Vec<_> = pats.iter().map(glob::Pattern::as_str).collect();
                parts.push(format!("{name}={}", list.join(",")));
            }
        }
        if !self.xpath.is_empty() {
            // Expressions hold spaces and commas: quoted, as in the sidecar.
            let list: Vec<&str> = self.xpath().collect();
            parts.push(format!("xpath={list:?}"));
        }
        if !self.xmlns.is_empty() {
            let list: Vec<String> = self.xmlns.iter().map(|(p, u)| format!("{p}={u}")).collect();
            parts.push(format!("xmlns={}", list.join(",")));
        }
        f.write_str(&parts.join(" "))
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &[glob::Pattern], b: &[glob::Pattern]| {
            a.iter()
                .map(glob::Pattern::as_str)
                .eq(b.iter().map(glob::Pattern::as_str))
        };
        same(&self.objects, &other.objects)
            && same(&self.ops, &other.ops)
            && same(&self.subops, &other.subops)
            && self.xpath == other.xpath
            && self.xmlns == other.xmlns
    }
}
