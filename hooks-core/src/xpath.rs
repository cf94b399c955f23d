//! `[match] xpath = ["…"]` in a sidecar: matching hooks on the event's document. The
//! rules, limits and costs are on [`XPath`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use xpath_eval::{ExpandedName, Expr, FilterExpr, NodeKind, NodeTest, PathExpr, PrimaryExpr};

use crate::xml::{parse_guarded, Unparsed};

/// The limits on a guest's document and on `[match] xpath` expressions ([`XPath`] says
/// how they apply), public so that its docs can name them.
pub mod limits {
    pub use crate::xml::{
        MAX_ATTRIBUTES, MAX_ATTRIBUTES_PER_ELEMENT, MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_NAMESPACE_DECLARATIONS,
        MAX_NODES,
    };
    /// The longest expression accepted, in bytes.
    pub const MAX_EXPRESSION_BYTES: usize = 4096;
    /// The deepest nesting of brackets in an expression (the expression parser
    /// recurses).
    pub const MAX_EXPRESSION_NESTING: usize = 64;
}
use limits::{MAX_EXPRESSION_BYTES, MAX_EXPRESSION_NESTING};

/// The namespace of the `xml` prefix (`xml:lang`), bound without being declared.
const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// One compiled `[match] xpath` expression: matching a hook on the event's document.
///
/// A hook whose settings carry XPath expressions is called only when **every** expression
/// holds on the event's input — the domain XML, or a network event's `<hookData>`:
///
/// - an expression that yields a node-set holds when it selects at least one node
///   (`/domain/devices/hostdev`);
/// - any other value is converted as XPath 1.0's `boolean()` does: a number holds unless
///   it is 0 or NaN (`count(/domain/devices/disk)`), a string unless it is empty
///   (`string(/domain/@type)`), a boolean is itself (`count(/domain/devices/disk) > 1`).
///
/// Expressions are XPath 1.0 with its core function library, evaluated with the
/// document's root node as the context node. They are compiled once, when the sidecar is
/// read: a syntax error, an unknown function, a wrong number of arguments, a variable
/// (`$x`: none are bound), or a prefix that the sidecar does not bind is a
/// [`SettingsError`](crate::backend::SettingsError) naming the file, the line and the
/// column.
///
/// # Namespaces
/// libvirt keeps each application's `<metadata>` in its own namespace
/// (`<metadata><app:gpu xmlns:app="http://example.org/app/1.0"/></metadata>`). A name
/// test without a prefix matches only elements in no namespace, as in XPath 1.0, so
/// either test the local name, or bind a prefix of your own in the sidecar:
///
/// ```toml
/// [match]
/// xpath = ["/domain/metadata/*[local-name() = 'gpu']"]   # <gpu> in any namespace
/// ```
/// ```toml
/// [match]
/// xpath = ["/domain/metadata/g:gpu"]                      # <gpu> in exactly this one
/// xmlns = { g = "http://example.org/app/1.0" }            # any prefix: it is the URI that counts
/// ```
///
/// `namespace-uri()` tests the URI directly:
/// `/domain/metadata/*[namespace-uri() = 'http://example.org/app/1.0']`.
///
/// # What is never matched, and what fails closed
/// An event without input (daemon events: their hooks read `/dev/null`) or with blank
/// input never matches: a hook that must see every event should not be selected by
/// `xpath`. Input that cannot be evaluated (not UTF-8, not well-formed XML, a DTD, past
/// the limits below) fails closed: every hook that matches on it is called, since a
/// guest's owner writes part of its definition, and
/// [`Report::unevaluated_document`](crate::Report::unevaluated_document) says why.
///
/// # Cost, and hostile documents
/// The document is parsed lazily, at most once per event however many hooks match on
/// it, and not at all when no hook's settings have `xpath` (the registry shares one
/// [`EventDocument`] between the hooks while it picks those that match; see
/// [`HookEvent::input_document`](crate::HookEvent::input_document)). A guest's definition
/// may come from someone with less privilege than the host's hooks, so it is treated as
/// hostile: the parser ([roxmltree](https://docs.rs/roxmltree)) expands no DTD entities
/// (a document with a DTD is refused, as libvirt refuses one in a domain definition), and
/// before parsing, a linear scan refuses documents larger than
/// [`MAX_DOCUMENT_BYTES`](limits::MAX_DOCUMENT_BYTES) (libvirt's own limit on an XML
/// string), nested deeper than [`MAX_DEPTH`](limits::MAX_DEPTH) elements (libxml2's own
/// limit, which libvirt keeps), with more than
/// [`MAX_ATTRIBUTES_PER_ELEMENT`](limits::MAX_ATTRIBUTES_PER_ELEMENT) attributes on one
/// element or [`MAX_ATTRIBUTES`](limits::MAX_ATTRIBUTES) in all, or with more than
/// [`MAX_NAMESPACE_DECLARATIONS`](limits::MAX_NAMESPACE_DECLARATIONS) namespace
/// declarations; the parser stops past [`MAX_NODES`](limits::MAX_NODES) nodes. Together
/// these bound the time (linear in the input) and the memory (a few tens of MiB at
/// worst) that one event's document can take. Expressions come from the sidecar, which
/// only root (or the effective uid) can write: they are limited to
/// [`MAX_EXPRESSION_BYTES`](limits::MAX_EXPRESSION_BYTES) and
/// [`MAX_EXPRESSION_NESTING`](limits::MAX_EXPRESSION_NESTING) levels of brackets. (The
/// [`limits`] page gives their values.)
///
/// # Example
/// ```
/// use virt_hooks_core::backend::{EventDocument, XPath};
/// let hostdev = XPath::compile("/domain/devices/hostdev", &[]).unwrap();
/// let disks = XPath::compile("count(/domain/devices/disk) > 1", &[]).unwrap();
/// let doc = EventDocument::new(Some(b"<domain><devices><disk/><hostdev/></devices></domain>"));
/// assert!(hostdev.holds(&doc, &[]));
/// assert!(!disks.holds(&doc, &[]));
/// let err = XPath::compile("/domain/devices/[hostdev]", &[]).unwrap_err();
/// assert_eq!(err.column, 17);
/// ```
#[derive(Clone)]
pub struct XPath {
    text: Box<str>,
    expr: Arc<Expr>,
}

/// An XPath expression that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct XPathError {
    /// Where in the expression (1-based, in characters).
    pub column: usize,
    /// Byte offset of the same place in the expression.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl XPathError {
    fn at(text: &str, offset: usize, message: impl Into<String>) -> Self {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        XPathError {
            column: text[..offset].chars().count() + 1,
            offset,
            message: message.into(),
        }
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

impl XPath {
    /// Compiles an XPath 1.0 expression. `namespaces` binds the prefixes it may use in
    /// name tests (`g:gpu`), as `(prefix, URI)` pairs; `xml` is always bound.
    ///
    /// # Errors
    /// An [`XPathError`] with the column: a syntax error, an unknown function or a
    /// wrong number of arguments, a variable, a prefix that `namespaces` does not bind,
    /// a function or operator that needs a node-set given something else, or an
    /// expression too long or too deeply bracketed.
    pub fn compile(text: &str, namespaces: &[(String, String)]) -> Result<Self, XPathError> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return Err(XPathError::at(
                text,
                MAX_EXPRESSION_BYTES,
                format!("the expression is longer than {MAX_EXPRESSION_BYTES} bytes"),
            ));
        }
        if let Some(at) = too_deep(text) {
            return Err(XPathError::at(
                text,
                at,
                format!("brackets nest deeper than {MAX_EXPRESSION_NESTING} levels"),
            ));
        }
        if text.trim().is_empty() {
            return Err(XPathError::at(text, 0, "the expression is empty"));
        }
        let expr = xpath_eval::parse(text).map_err(|e| XPathError::at(text, e.position, e.message))?;
        Checker { text, namespaces }.expr(&expr)?;
        Ok(XPath {
            text: text.into(),
            expr: Arc::new(expr),
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it holds on the document: selects at least one node, or is true under
    /// XPath's `boolean()`. False when there is no input, when it is not XML, and when
    /// evaluating fails. True, failing closed, for XML past the limits this module
    /// parses (size, depth, attributes): a guest's definition (its `<metadata>` takes
    /// any XML) must not be able to slip past a vetting hook selected by `xpath`.
    /// `namespaces` binds prefixes as in [`XPath::compile`].
    pub fn holds(&self, doc: &EventDocument<'_>, namespaces: &[(String, String)]) -> bool {
        match doc.lazy.parsed() {
            Parsed::Document(d) => self.holds_on(d, namespaces),
            Parsed::NotXml => false,
            Parsed::Refused(_) => true,
        }
    }

    pub(crate) fn holds_on(&self, doc: &roxmltree::Document<'_>, namespaces: &[(String, String)]) -> bool {
        let lookup = |prefix: &str| -> Option<String> {
            if prefix == "xml" {
                return Some(XML_NAMESPACE.to_owned());
            }
            namespaces.iter().find(|(p, _)| p == prefix).map(|(_, uri)| uri.clone())
        };
        let mut ctx = xpath_eval::EvaluationContext::new(XNode::Tree(doc.root()));
        ctx.namespaces = Some(&lookup);
        match xpath_eval::evaluate_boolean(&self.expr, &ctx) {
            Ok(holds) => holds,
            Err(e) => {
                tracing::debug!(xpath = %self.text, error = %e, "xpath: evaluation failed, no match");
                false
            }
        }
    }
}

impl fmt::Debug for XPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("XPath").field(&self.text).finish()
    }
}

impl fmt::Display for XPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for XPath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Where brackets first nest deeper than the limit, outside string literals.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    // Unary minuses in a row (`- - - 1`), which the parser also recurses on.
    let mut minuses = 0usize;
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[') => {
                depth += 1;
                if depth > MAX_EXPRESSION_NESTING {
                    return Some(i);
                }
            }
            (None, ')' | ']') => depth = depth.saturating_sub(1),
            (None, '-') => {
                minuses += 1;
                if minuses > MAX_EXPRESSION_NESTING {
                    return Some(i);
                }
                continue;
            }
            (None, c) if c.is_whitespace() => continue,
            _ => {}
        }
        minuses = 0;
    }
    None
}

/// Byte offset of the first `needle` outside string literals (for error columns: the
/// parsed expression has no positions).
fn find_outside_literals(text: &str, needle: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, _) if text[i..].starts_with(needle) => return Some(i),
            _ => {}
        }
    }
    None
}

/// XPath 1.0's core function library: name, least and most arguments.
const FUNCTIONS: &[(&str, usize, Option<usize>)] = &[
    ("last", 0, Some(0)),
    ("position", 0, Some(0)),
    ("count", 1, Some(1)),
    ("id", 1, Some(1)),
    ("local-name", 0, Some(1)),
    ("namespace-uri", 0, Some(1)),
    ("name", 0, Some(1)),
    ("string", 0, Some(1)),
    ("concat", 2, None),
    ("starts-with", 2, Some(2)),
    ("contains", 2, Some(2)),
    ("substring-before", 2, Some(2)),
    ("substring-after", 2, Some(2)),
    ("substring", 2, Some(3)),
    ("string-length", 0, Some(1)),
    ("normalize-space", 0, Some(1)),
    ("translate", 3, Some(3)),
    ("boolean", 1, Some(1)),
    ("not", 1, Some(1)),
    ("true", 0, Some(0)),
    ("false", 0, Some(0)),
    ("lang", 1, Some(1)),
    ("number", 0, Some(1)),
    ("sum", 1, Some(1)),
    ("floor", 1, Some(1)),
    ("ceiling", 1, Some(1)),
    ("round", 1, Some(1)),
];

/// Functions whose argument must be a node-set.
const NODE_SET_ARGUMENTS: &[&str] = &["count", "sum", "local-name", "namespace-uri", "name"];

/// What the checker can tell about an expression's type without a document.
#[derive(PartialEq)]
enum Kind {
    NodeSet,
    Other,
}

/// Finds at compile time what the evaluator would only find on a document: unknown
/// functions, wrong argument counts, variables, unbound prefixes, non-node-sets where a
/// node-set is needed.
struct Checker<'a> {
    text: &'a str,
    namespaces: &'a [(String, String)],
}

impl Checker<'_> {
    fn fail(&self, needle: &str, message: String) -> XPathError {
        let at = find_outside_literals(self.text, needle).unwrap_or(0);
        XPathError::at(self.text, at, message)
    }

    /// An error at a call of function `name`.
    fn fail_call(&self, name: &str, message: String) -> XPathError {
        match find_outside_literals(self.text, &format!("{name}(")) {
            Some(at) => XPathError::at(self.text, at, message),
            None => self.fail(name, message),
        }
    }

    fn expr(&self, e: &Expr) -> Result<Kind, XPathError> {
        match e {
            Expr::Or(a, b) | Expr::And(a, b) => {
                self.expr(a)?;
                self.expr(b)?;
                Ok(Kind::Other)
            }
            Expr::Equality(a, _, b)
            | Expr::Relational(a, _, b)
            | Expr::Additive(a, _, b)
            | Expr::Multiplicative(a, _, b) => {
                self.expr(a)?;
                self.expr(b)?;
                Ok(Kind::Other)
            }
            Expr::Negate(a) => {
                self.expr(a)?;
                Ok(Kind::Other)
            }
            Expr::Union(a, b) => {
                for side in [a, b] {
                    if self.expr(side)? != Kind::NodeSet {
                        return Err(self.fail("|", "`|` joins node-sets, and one side is not a node-set".into()));
                    }
                }
                Ok(Kind::NodeSet)
            }
            Expr::Path(PathExpr::Location(path)) => {
                self.steps(&path.steps)?;
                Ok(Kind::NodeSet)
            }
            Expr::Path(PathExpr::Filter(filter)) => self.filter(filter, false),
            Expr::Path(PathExpr::FilterLocation(filter, path)) => {
                self.filter(filter, true)?;
                self.steps(&path.steps)?;
                Ok(Kind::NodeSet)
            }
        }
    }

    fn steps(&self, steps: &[xpath_eval::Step]) -> Result<(), XPathError> {
        for step in steps {
            match &step.node_test {
                NodeTest::QName(q) => self.prefix(q.prefix.as_deref())?,
                NodeTest::NamespaceWildcard(prefix) => self.prefix(Some(prefix))?,
                _ => {}
            }
            for p in &step.predicates {
                self.expr(p)?;
            }
        }
        Ok(())
    }

    fn prefix(&self, prefix: Option<&str>) -> Result<(), XPathError> {
        match prefix {
            Some(p) if p != "xml" && !self.namespaces.iter().any(|(bound, _)| bound == p) => Err(self.fail(
                &format!("{p}:"),
                format!(
                    "the prefix `{p}` is not bound: add it to the sidecar's `xmlns` \
                     (`xmlns = {{ {p} = \"URI\" }}`), or test `local-name()`"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A filter expression; `then_path` when a location path follows it.
    fn filter(&self, filter: &FilterExpr, then_path: bool) -> Result<Kind, XPathError> {
        let kind = match &filter.primary {
            PrimaryExpr::Variable(q) => {
                let shown = match &q.prefix {
                    Some(p) => format!("{p}:{}", q.local),
                    None => q.local.clone(),
                };
                return Err(self.fail(
                    &format!("${shown}"),
                    format!("no variables are defined here (`${shown}`)"),
                ));
            }
            PrimaryExpr::Parenthesized(inner) => self.expr(inner)?,
            PrimaryExpr::Literal(_) | PrimaryExpr::Number(_) => Kind::Other,
            PrimaryExpr::Function(call) => self.function(call)?,
        };
        for p in &filter.predicates {
            self.expr(p)?;
        }
        if (then_path || !filter.predicates.is_empty()) && kind != Kind::NodeSet {
            let what = if then_path { "a path step" } else { "a predicate" };
            return Err(XPathError::at(
                self.text,
                0,
                format!("{what} applies to node-sets only, and this is not one"),
            ));
        }
        Ok(kind)
    }

    fn function(&self, call: &xpath_eval::FunctionCall) -> Result<Kind, XPathError> {
        let name = &call.name;
        let shown = match &name.prefix {
            Some(p) => format!("{p}:{}", name.local),
            None => name.local.clone(),
        };
        let known = FUNCTIONS
            .iter()
            .find(|(n, ..)| name.prefix.is_none() && *n == name.local);
        let Some(&(_, least, most)) = known else {
            return Err(self.fail_call(
                &shown,
                format!("unknown function `{shown}()`: XPath 1.0's core functions only"),
            ));
        };
        let n = call.args.len();
        if n < least || most.is_some_and(|m| n > m) {
            let wanted = match most {
                Some(m) if m == least => format!("{least}"),
                Some(m) => format!("{least} to {m}"),
                None => format!("at least {least}"),
            };
            return Err(self.fail_call(&shown, format!("`{shown}()` takes {wanted} argument(s), not {n}")));
        }
        for arg in &call.args {
            let kind = self.expr(arg)?;
            if NODE_SET_ARGUMENTS.contains(&name.local.as_str()) && kind != Kind::NodeSet {
                return Err(self.fail_call(&shown, format!("`{shown}()` needs a node-set (a path)")));
            }
        }
        Ok(if name.local == "id" { Kind::NodeSet } else { Kind::Other })
    }
}

/// The input of one event, parsed as XML at most once, when first asked for.
///
/// The registry makes one per event while it chooses the hooks to run, and every hook's
/// `[match] xpath` reads the same parse (see [`HookEvent::input_document`]). See the
/// [`XPath`] for the limits that keep a hostile document cheap.
///
/// [`HookEvent::input_document`]: crate::HookEvent::input_document
///
/// ```
/// use virt_hooks_core::backend::EventDocument;
/// assert!(EventDocument::new(Some(b"<domain type='kvm'/>")).is_xml());
/// assert!(!EventDocument::new(Some(b"not xml")).is_xml());
/// assert!(!EventDocument::new(None).is_xml());
/// ```
pub struct EventDocument<'e> {
    lazy: Box<dyn Lazy + 'e>,
}

impl<'e> EventDocument<'e> {
    /// The event input `input` (`None`: `/dev/null`), not parsed yet.
    pub fn new(input: Option<&'e [u8]>) -> Self {
        EventDocument {
            lazy: Box::new(LazyDocument {
                input,
                parsed: OnceLock::new(),
            }),
        }
    }

    /// Whether the input is a usable XML document (parsing it if not done yet).
    pub fn is_xml(&self) -> bool {
        matches!(self.lazy.parsed(), Parsed::Document(_))
    }
}

impl fmt::Debug for EventDocument<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDocument").finish_non_exhaustive()
    }
}

/// An event as the hooks' `matches` see it while the registry picks the hooks for it:
/// the event itself, with one [`EventDocument`] for all of them.
pub(crate) struct DocumentScope<'e> {
    event: &'e dyn crate::HookEvent,
    document: EventDocument<'e>,
}

impl<'e> DocumentScope<'e> {
    pub(crate) fn new(event: &'e dyn crate::HookEvent) -> Self {
        DocumentScope {
            event,
            document: EventDocument::new(event.input()),
        }
    }

    /// Why the document was not evaluated, if a hook asked and it was not.
    pub(crate) fn unevaluated(&self) -> Option<String> {
        match self.document.lazy.peek()? {
            Parsed::Refused(why) => Some(why.clone()),
            _ => None,
        }
    }
}

impl fmt::Debug for DocumentScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.event.fmt(f)
    }
}

impl crate::HookEvent for DocumentScope<'_> {
    fn driver(&self) -> crate::Driver {
        self.event.driver()
    }
    fn object(&self) -> &str {
        self.event.object()
    }
    fn op(&self) -> &str {
        self.event.op()
    }
    fn subop(&self) -> &str {
        self.event.subop()
    }
    fn extra(&self) -> &str {
        self.event.extra()
    }
    fn input(&self) -> Option<&[u8]> {
        self.event.input()
    }
    fn on_failure(&self) -> crate::FailurePolicy {
        self.event.on_failure()
    }
    fn filters_input(&self) -> bool {
        self.event.filters_input()
    }
    fn os_args(&self) -> [&std::ffi::OsStr; 4] {
        self.event.os_args()
    }
    fn input_document(&self) -> Option<&EventDocument<'_>> {
        self.event.input_document().or(Some(&self.document))
    }
}

/// The parse-once cell, behind a trait object so that [`EventDocument`] stays covariant
/// in its lifetime (a `OnceLock` of a borrowing document would not be).
trait Lazy: Send + Sync {
    fn parsed(&self) -> &Parsed<'_>;
    /// What [`Lazy::parsed`] found, if anything asked yet.
    fn peek(&self) -> Option<&Parsed<'_>>;
}

/// What an event's input is to `xpath`.
pub(crate) enum Parsed<'e> {
    Document(roxmltree::Document<'e>),
    /// No input, or not XML: nothing matches.
    NotXml,
    /// Present but not evaluated (past the limits, or not XML this parser takes): every
    /// expression holds (fail closed). Says why.
    Refused(String),
}

struct LazyDocument<'e> {
    input: Option<&'e [u8]>,
    parsed: OnceLock<Parsed<'e>>,
}

impl Lazy for LazyDocument<'_> {
    fn parsed(&self) -> &Parsed<'_> {
        self.parsed.get_or_init(|| parse(self.input))
    }

    fn peek(&self) -> Option<&Parsed<'_>> {
        self.parsed.get()
    }
}

#[cfg(test)]
thread_local! {
    /// How many documents this thread parsed (for the parse-once tests).
    pub(crate) static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn parse(input: Option<&[u8]>) -> Parsed<'_> {
    #[cfg(test)]
    PARSES.with(|n| n.set(n.get() + 1));
    let Some(bytes) = input else {
        tracing::debug!("xpath: the event has no input (/dev/null), no match");
        return Parsed::NotXml;
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        tracing::debug!("xpath: the event's input is empty, no match");
        return Parsed::NotXml;
    }
    // Anything else that is not evaluated fails closed. libvirt keeps XML that a strict
    // parser refuses (an undeclared prefix inside <metadata>, which a guest's owner
    // writes), so "not XML" must not be a way past a vetting hook.
    let why = match std::str::from_utf8(bytes) {
        Err(e) => format!("not UTF-8: {e}"),
        Ok(text) => match parse_guarded(text) {
            Ok(doc) => return Parsed::Document(doc),
            Err(Unparsed::Refused(why)) => why,
            Err(Unparsed::NotXml(e)) => format!("not XML this parser takes: {e}"),
        },
    };
    tracing::warn!("xpath: the event's document is not evaluated ({why}); every hook that matches on it is called");
    Parsed::Refused(why)
}

/// A node of the parsed document as XPath sees it: roxmltree's nodes, plus attribute
/// and namespace nodes (the index among their element's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XNode<'a> {
    Tree(roxmltree::Node<'a, 'a>),
    Attribute(roxmltree::Node<'a, 'a>, usize),
    Namespace(roxmltree::Node<'a, 'a>, usize),
}

impl<'a> XNode<'a> {
    fn attribute(owner: roxmltree::Node<'a, 'a>, i: usize) -> Option<roxmltree::Attribute<'a, 'a>> {
        owner.attributes().nth(i)
    }

    fn namespace(owner: roxmltree::Node<'a, 'a>, i: usize) -> Option<&'a roxmltree::Namespace<'a>> {
        owner.namespaces().nth(i)
    }

    /// Document order: the tree node, then its namespace nodes, then its attributes;
    /// roxmltree numbers tree nodes in document order.
    fn order_key(self) -> (usize, u8, usize) {
        match self {
            XNode::Tree(n) => (n.id().get_usize(), 0, 0),
            XNode::Namespace(n, i) => (n.id().get_usize(), 1, i),
            XNode::Attribute(n, i) => (n.id().get_usize(), 2, i),
        }
    }
}

impl<'a> xpath_eval::Node<'a> for XNode<'a> {
    fn kind(self) -> NodeKind {
        use roxmltree::NodeType;
        match self {
            XNode::Tree(n) => match n.node_type() {
                NodeType::Root => NodeKind::Root,
                NodeType::Element => NodeKind::Element,
                NodeType::PI => NodeKind::ProcessingInstruction,
                NodeType::Comment => NodeKind::Comment,
                NodeType::Text => NodeKind::Text,
            },
            XNode::Attribute(..) => NodeKind::Attribute,
            XNode::Namespace(..) => NodeKind::Namespace,
        }
    }

    fn parent(self) -> Option<Self> {
        match self {
            XNode::Tree(n) => n.parent().map(XNode::Tree),
            XNode::Attribute(owner, _) | XNode::Namespace(owner, _) => Some(XNode::Tree(owner)),
        }
    }

    fn children(self) -> impl Iterator<Item = Self> + 'a {
        let node = match self {
            XNode::Tree(n) => Some(n),
            _ => None,
        };
        node.into_iter().flat_map(|n| n.children()).map(XNode::Tree)
    }

    fn attributes(self) -> impl Iterator<Item = Self> + 'a {
        let (owner, count) = match self {
            XNode::Tree(n) if n.is_element() => (Some(n), n.attributes().len()),
            _ => (None, 0),
        };
        owner
            .into_iter()
            .flat_map(move |n| (0..count).map(move |i| XNode::Attribute(n, i)))
    }

    fn namespaces(self) -> impl Iterator<Item = Self> + 'a {
        let (owner, count) = match self {
            XNode::Tree(n) if n.is_element() => (Some(n), n.namespaces().len()),
            _ => (None, 0),
        };
        owner
            .into_iter()
            .flat_map(move |n| (0..count).map(move |i| XNode::Namespace(n, i)))
    }

    fn expanded_name(self) -> Option<ExpandedName> {
        let (uri, local) = self.name_parts()?;
        Some(ExpandedName {
            namespace_uri: uri.map(str::to_owned),
            local_name: local.to_owned(),
        })
    }

    fn has_expanded_name(self, namespace_uri: Option<&str>, local_name: &str) -> bool {
        self.name_parts() == Some((namespace_uri, local_name))
    }

    fn string_value(self) -> String {
        self.with_string_value(str::to_owned)
    }

    fn with_string_value<R>(self, f: impl FnOnce(&str) -> R) -> R {
        use roxmltree::NodeType;
        match self {
            XNode::Tree(n) => match n.node_type() {
                NodeType::Root | NodeType::Element => {
                    let text: String = n
                        .descendants()
                        .filter(|d| d.is_text())
                        .filter_map(|d| d.text())
                        .collect();
                    f(&text)
                }
                NodeType::Text | NodeType::Comment => f(n.text().unwrap_or_default()),
                NodeType::PI => f(n.pi().and_then(|pi| pi.value).unwrap_or_default()),
            },
            XNode::Attribute(owner, i) => f(Self::attribute(owner, i).map_or("", |a| a.value())),
            XNode::Namespace(owner, i) => f(Self::namespace(owner, i).map_or("", |ns| ns.uri())),
        }
    }

    fn document_order(self, other: Self) -> std::cmp::Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl<'a> XNode<'a> {
    /// The expanded name as borrowed parts: (namespace URI, local name).
    fn name_parts(self) -> Option<(Option<&'a str>, &'a str)> {
        match self {
            XNode::Tree(n) if n.is_element() => {
                let tag = n.tag_name();
                Some((tag.namespace(), tag.name()))
            }
            XNode::Tree(n) => n.pi().map(|pi| (None, pi.target)),
            XNode::Attribute(owner, i) => Self::attribute(owner, i).map(|a| (a.namespace(), a.name())),
            XNode::Namespace(owner, i) => Self::namespace(owner, i).map(|ns| (None, ns.name().unwrap_or_default())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The limits [`XPath`]'s docs state are links to the constants that enforce them,
    /// never numbers written by hand (8 MiB and 250,000 were, beside 4 MiB and 10,000).
    #[test]
    fn the_documented_limits_are_the_constants() {
        let source = include_str!("xpath.rs");
        let mut docs: Vec<&str> = source[..source.find("pub struct XPath").expect("XPath is defined")]
            .lines()
            .rev()
            .take_while(|line| line.starts_with("///") || line.starts_with("#["))
            .filter_map(|line| line.strip_prefix("///"))
            .collect();
        docs.reverse();
        let docs = docs.join("\n");
        let section = docs
            .split("# Cost, and hostile documents")
            .nth(1)
            .and_then(|rest| rest.split("\n # ").next())
            .expect("XPath's docs have a section on cost");
        let by_hand: Vec<&str> = section
            .split(|c: char| !c.is_alphanumeric() && c != ',')
            .filter(|word| word.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert!(by_hand.is_empty(), "limits written by hand: {by_hand:?}\n{section}");
        let constants = [
            "MAX_DOCUMENT_BYTES",
            "MAX_DEPTH",
            "MAX_ATTRIBUTES_PER_ELEMENT",
            "MAX_ATTRIBUTES",
            "MAX_NAMESPACE_DECLARATIONS",
            "MAX_NODES",
            "MAX_EXPRESSION_BYTES",
            "MAX_EXPRESSION_NESTING",
        ];
        for name in constants {
            assert!(
                section.contains(&format!("[`{name}`](limits::{name})")),
                "{name} is not linked:\n{section}"
            );
        }
        // Every limit declared is among them (the document's are with the parser).
        let declared: usize = [source, include_str!("xml.rs")]
            .iter()
            .map(|file| file.matches(concat!("pub const ", "MAX_")).count())
            .sum();
        assert_eq!(declared, constants.len(), "a limit that the docs do not state");
    }

    const DOMAIN: &str = r#"<domain type='kvm'>
  <name>gpu-worker-1</name>
  <metadata>
    <app:gpu xmlns:app="http://example.org/app/1.0" model="a100"/>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <devices>
    <disk type='file' device='disk'><target dev='vda'/></disk>
    <disk type='file' device='cdrom'><target dev='sda'/></disk>
    <hostdev mode='subsystem' type='pci'/>
    <!-- a comment -->
  </devices>
</domain>
"#;

    fn holds_ns(expr: &str, doc: &str, ns: &[(String, String)]) -> bool {
        let x = XPath::compile(expr, ns).unwrap_or_else(|e| panic!("{expr}: {e}"));
        x.holds(&EventDocument::new(Some(doc.as_bytes())), ns)
    }

    pub(crate) fn holds(expr: &str, doc: &str) -> bool {
        holds_ns(expr, doc, &[])
    }

    fn compile_err(expr: &str) -> XPathError {
        XPath::compile(expr, &[]).expect_err(expr)
    }

    #[test]
    fn bad_expressions_are_errors_with_their_column() {
        let e = compile_err("/domain/devices/[hostdev]");
        assert_eq!((e.column, e.offset), (17, 16), "{e}");
        let e = compile_err("/domain[");
        assert!(e.column >= 8, "{e}");
        let e = compile_err("count(/domain/devices/disk) >");
        assert!(e.column >= 29, "{e}");
        let e = compile_err("/domain/devices/hostdev[frobnicate(.)]");
        assert_eq!(e.column, 25, "{e}");
        assert!(e.message.contains("unknown function `frobnicate()`"), "{e}");
        let e = compile_err("starts-with(/domain/name)");
        assert!(e.message.contains("takes 2 argument(s), not 1"), "{e}");
        assert_eq!(e.column, 1);
        let e = compile_err("/domain[name = $guest]");
        assert_eq!(e.column, 16, "{e}");
        assert!(e.message.contains("no variables"), "{e}");
        let e = compile_err("/domain/metadata/app:gpu");
        assert_eq!(e.column, 18, "{e}");
        assert!(e.message.contains("prefix `app` is not bound"), "{e}");
        let e = compile_err("count('disk') > 1");
        assert!(e.message.contains("needs a node-set"), "{e}");
        let e = compile_err("/domain | 'x'");
        assert_eq!(e.column, 9, "{e}");
        let e = compile_err("   ");
        assert!(e.message.contains("empty"), "{e}");
        // A literal is not searched for the culprit.
        let e = compile_err("/domain[name = 'frob()'][frob()]");
        assert_eq!(e.column, 26, "{e}");
    }

    #[test]
    fn hostile_expressions_are_refused_before_parsing() {
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = compile_err(&deep);
        assert!(e.message.contains("longer than"), "{e}");
        let deep = format!("{}1{}", "(".repeat(1000), ")".repeat(1000));
        let e = compile_err(&deep);
        assert!(e.message.contains("nest deeper"), "{e}");
        assert_eq!(e.column, MAX_EXPRESSION_NESTING + 1);
        let brackets = format!("/a{}", "[b".repeat(100));
        assert!(compile_err(&brackets).message.contains("nest deeper"));
        // Brackets inside a literal do not count.
        XPath::compile(&format!("/a[name = '{}']", "(".repeat(500)), &[]).unwrap();
        // Unary minuses in a row recurse in the parser as brackets do.
        let minuses = format!("{}1", "- ".repeat(2000));
        assert!(
            compile_err(&minuses).message.contains("nest deeper"),
            "{}",
            compile_err(&minuses).message
        );
        XPath::compile("count(//port-created) - -1 > following-sibling::a-b", &[]).unwrap();
    }

    #[test]
    fn no_input_never_matches_and_input_not_evaluated_fails_closed() {
        let x = XPath::compile("true()", &[]).unwrap();
        for input in [None, Some(&b""[..]), Some(b"   \n")] {
            let doc = EventDocument::new(input);
            assert!(!doc.is_xml(), "{input:?}");
            assert!(!x.holds(&doc, &[]), "{input:?}");
        }
        // Input that is there but not evaluated fails closed: libvirt keeps XML that
        // this parser refuses (an undeclared prefix in <metadata>).
        for input in [
            &b"not xml at all"[..],
            b"<domain>",
            b"<domain></domian>",
            b"<a/><b/>",
            b"<domain>\xff</domain>",
            b"<domain attr=unquoted/>",
            b"<domain><metadata><t:x xmlns:t='urn:t'><foo:bar/></t:x></metadata></domain>",
        ] {
            let doc = EventDocument::new(Some(input));
            assert!(!doc.is_xml(), "{input:?}");
            assert!(x.holds(&doc, &[]), "{input:?}");
        }
        assert!(x.holds(&EventDocument::new(Some(b"<domain/>")), &[]));
    }

    #[test]
    fn device_and_name_matches() {
        assert!(holds("/domain/devices/hostdev", DOMAIN));
        assert!(!holds("/domain/devices/interface", DOMAIN));
        assert!(holds("/domain/devices/hostdev[@type='pci']", DOMAIN));
        assert!(holds("/domain/name[starts-with(., 'gpu-')]", DOMAIN));
        assert!(!holds("/domain/name[starts-with(., 'db-')]", DOMAIN));
        assert!(
            holds("domain/devices/disk[@device='cdrom']", DOMAIN),
            "relative to the root"
        );
        assert!(holds("//target[@dev='vda']", DOMAIN));
        assert!(holds("/domain/@type = 'kvm'", DOMAIN));
        assert!(holds("/domain/devices/comment()", DOMAIN));
        assert!(holds("/domain/devices/node()[2]/self::disk", DOMAIN));
        assert!(holds("//disk[1]/following-sibling::hostdev", DOMAIN));
        assert!(holds("//hostdev/preceding::disk[2]/@device = 'disk'", DOMAIN));
    }

    #[test]
    fn booleans_numbers_and_strings_convert_as_boolean_does() {
        assert!(holds("count(/domain/devices/disk) > 1", DOMAIN));
        assert!(!holds("count(/domain/devices/disk) > 2", DOMAIN));
        assert!(holds("count(/domain/devices/disk)", DOMAIN), "2 is true");
        assert!(!holds("count(/domain/devices/interface)", DOMAIN), "0 is false");
        assert!(!holds("number('x')", DOMAIN), "NaN is false");
        assert!(holds("-1", DOMAIN));
        assert!(holds("string(/domain/name)", DOMAIN), "a non-empty string");
        assert!(!holds("string(/domain/title)", DOMAIN), "the empty string");
        assert!(holds("'false'", DOMAIN), "any non-empty string, even this one");
        assert!(!holds("false()", DOMAIN));
        assert!(holds("not(/domain/devices/interface)", DOMAIN));
        assert!(
            holds("number(/domain/title) != number(/domain/title)", DOMAIN),
            "NaN != NaN"
        );
        assert!(holds("string-length(/domain/name) = 12", DOMAIN));
    }

    #[test]
    fn namespaced_metadata_by_local_name_by_uri_and_by_bound_prefix() {
        assert!(holds("/domain/metadata/*[local-name()='gpu']", DOMAIN));
        assert!(holds("/domain/metadata/*[local-name()='gpu'][@model='a100']", DOMAIN));
        assert!(!holds("/domain/metadata/gpu", DOMAIN), "no prefix: no namespace");
        assert!(holds(
            "/domain/metadata/*[namespace-uri()='http://example.org/app/1.0']",
            DOMAIN
        ));
        let ns = vec![("g".to_owned(), "http://example.org/app/1.0".to_owned())];
        assert!(holds_ns("/domain/metadata/g:gpu", DOMAIN, &ns));
        assert!(holds_ns("/domain/metadata/g:*", DOMAIN, &ns));
        assert!(!holds_ns("/domain/metadata/g:libosinfo", DOMAIN, &ns));
        let other = vec![("g".to_owned(), "http://example.org/other".to_owned())];
        assert!(!holds_ns("/domain/metadata/g:gpu", DOMAIN, &other));
        let os = vec![(
            "o".to_owned(),
            "http://libosinfo.org/xmlns/libvirt/domain/1.0".to_owned(),
        )];
        assert!(holds_ns("//o:os[starts-with(@id, 'http://debian.org/')]", DOMAIN, &os));
        assert!(holds("name(/domain/metadata/*[1]) = 'app:gpu'", DOMAIN));
        assert!(holds("/domain/metadata/*[1]/namespace::app", DOMAIN));
        assert!(holds(
            "/domain/description[@xml:lang = 'en']",
            "<domain><description xml:lang='en'/></domain>"
        ));
    }

    #[test]
    fn every_node_kind_has_its_string_value_and_order() {
        let doc = "<?pi data?><r a='1' xmlns:p='urn:p'><!--c-->t<e p:b='2'>u</e></r>";
        assert!(holds("/processing-instruction('pi') = 'data'", doc));
        assert!(holds("/r = 'tu'", doc));
        assert!(holds("/r/comment() = 'c'", doc));
        assert!(holds("/r/@a = 1", doc));
        assert!(holds("/r/namespace::p = 'urn:p'", doc));
        assert!(holds(
            "local-name(/r/e/@*) = 'b' and namespace-uri(/r/e/@*) = 'urn:p'",
            doc
        ));
        assert!(holds("(/r/@a | /r/e | /r/namespace::p)[1]/self::node() = 'urn:p'", doc));
        assert!(holds("(//node() | //@*)[last()] = 'u'", doc));
    }

    #[test]
    fn a_network_events_hook_data() {
        let data = "<hookData><network><name>default</name><bridge name='virbr0'/></network></hookData>";
        assert!(holds("/hookData/network[name='default']/bridge[@name='virbr0']", data));
    }
}

/// The registry parses an event's document once for all hooks, and only when one asks.
#[cfg(test)]
mod registry_tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::PARSES;
    use crate::backend::{HookSettings, Matcher};
    use crate::{DaemonEvent, Driver, Hook, HookEntry, HookEvent, HookOutcome, Invocation, QemuEvent, RegistryBuilder};

    /// A hook with a sidecar's `[match]`, as the loader configures file hooks.
    struct Named(String);

    #[async_trait::async_trait]
    impl Hook for Named {
        fn name(&self) -> &str {
            &self.0
        }
        async fn call(&self, _inv: &Invocation) -> HookOutcome {
            HookOutcome::success()
        }
    }

    fn hook(name: &str, sidecar: &str) -> HookEntry {
        let settings = HookSettings::parse(Path::new("t.toml"), sidecar).unwrap();
        let matcher: Arc<Matcher> = Arc::new(settings.matcher);
        HookEntry::new(Named(name.into())).matching(move |event: &dyn HookEvent| matcher.matches(event))
    }

    fn parses_during(f: impl FnOnce()) -> usize {
        let before = PARSES.with(|n| n.get());
        f();
        PARSES.with(|n| n.get()) - before
    }

    fn ran(report: &crate::Report) -> Vec<&str> {
        report.hooks.iter().map(|h| h.name.as_str()).collect()
    }

    const GUEST: &str = "<domain><name>gpu-1</name><devices><disk/><disk/><hostdev/></devices></domain>";

    #[test]
    fn one_parse_for_every_hook_that_matches_on_the_document() {
        let registry = RegistryBuilder::new()
            .entry(Some(Driver::Qemu), hook("hostdev", "[match]\nxpath = [\"/domain/devices/hostdev\"]\n"))
            .entry(Some(Driver::Qemu), hook("plain", ""))
            .entry(
                Some(Driver::Qemu),
                hook("disks", "[match]\nxpath = [\"count(/domain/devices/disk) > 1\", \"/domain/name[starts-with(., 'gpu-')]\"]\n"),
            )
            .entry(Some(Driver::Qemu), hook("nic", "[match]\nxpath = [\"/domain/devices/interface\"]\n"))
            .build();
        let event = QemuEvent::Prepare {
            name: "gpu-1".into(),
            xml: GUEST.into(),
        };
        let mut report = None;
        let parses = parses_during(|| report = Some(registry.fire_blocking(&event).unwrap()));
        assert_eq!(parses, 1);
        assert_eq!(ran(report.as_ref().unwrap()), ["hostdev", "plain", "disks"]);
        let parses = parses_during(|| assert_eq!(registry.hooks_for(&event).len(), 3));
        assert_eq!(parses, 1, "hooks_for too");
    }

    #[test]
    fn no_parse_when_no_hook_matches_on_the_document() {
        let registry = RegistryBuilder::new()
            .entry(Some(Driver::Qemu), hook("plain", ""))
            .entry(Some(Driver::Qemu), hook("ops", "[match]\nops = [\"prepare\"]\n"))
            // Its globs fail first: the document is not needed to know.
            .entry(
                Some(Driver::Qemu),
                hook("other-guests", "[match]\nobjects = [\"db-*\"]\nxpath = [\"/domain\"]\n"),
            )
            .build();
        let event = QemuEvent::Prepare {
            name: "gpu-1".into(),
            xml: GUEST.into(),
        };
        let mut report = None;
        let parses = parses_during(|| report = Some(registry.fire_blocking(&event).unwrap()));
        assert_eq!(parses, 0);
        assert_eq!(ran(report.as_ref().unwrap()), ["plain", "ops"]);
    }

    #[test]
    fn events_without_a_document_never_match_and_unparsed_ones_do() {
        let registry = RegistryBuilder::new()
            .entry(None, hook("xpath", "[match]\nxpath = [\"true()\"]\n"))
            .entry(None, hook("plain", ""))
            .build();
        let report = registry.fire_blocking(&DaemonEvent::Start).unwrap();
        assert_eq!(ran(&report), ["plain"]);
        let stopped = QemuEvent::Stopped {
            name: "vm".into(),
            xml: "   \n".into(),
        };
        assert_eq!(ran(&registry.fire_blocking(&stopped).unwrap()), ["plain"]);
        // Input that is there but not XML this parser takes fails closed.
        let odd = QemuEvent::Stopped {
            name: "vm".into(),
            xml: "this is not XML".into(),
        };
        let report = registry.fire_blocking(&odd).unwrap();
        assert_eq!(ran(&report), ["xpath", "plain"]);
        // The report says so, and why.
        let why = report.unevaluated_document.as_deref().unwrap_or_default();
        assert!(why.starts_with("not XML this parser takes"), "{why}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["unevaluated_document"], why);
        let started = QemuEvent::Started {
            name: "vm".into(),
            xml: "<domain/>".into(),
        };
        assert_eq!(ran(&registry.fire_blocking(&started).unwrap()), ["xpath", "plain"]);
    }
}

/// No expression or document makes matching panic.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_expression_compiles_or_is_an_error_with_a_column(text in "\\PC{0,60}") {
            match XPath::compile(&text, &[]) {
                Ok(x) => { x.holds(&EventDocument::new(Some(b"<a b='1'><c/>t</a>")), &[]); }
                Err(e) => prop_assert!(e.column >= 1 && e.offset <= text.len()),
            }
        }

        #[test]
        fn xpath_like_expressions_never_panic(text in "[/a-z@*.()\\[\\]|=<>!'0-9: $-]{0,40}") {
            if let Ok(x) = XPath::compile(&text, &[("p".into(), "urn:p".into())]) {
                x.holds(&EventDocument::new(Some(b"<a xmlns:p='urn:p' b='1'><p:c/>t<!--x--></a>")), &[("p".into(), "urn:p".into())]);
            }
        }

        #[test]
        fn any_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let x = XPath::compile("//*", &[]).unwrap();
            x.holds(&EventDocument::new(Some(&input)), &[]);
        }

        #[test]
        fn xml_like_input_never_panics(input in "[<>/a-c'\"= !?\\[\\]-]{0,80}") {
            let x = XPath::compile("//*[@*]", &[]).unwrap();
            x.holds(&EventDocument::new(Some(input.as_bytes())), &[]);
        }
    }
}
