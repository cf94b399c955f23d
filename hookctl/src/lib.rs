//! What hookctl's two programs share: how `hookctl` and `hookctl-native`, the host that
//! runs one native plugin in a process of its own, talk ([`native_wire`]).
//!
//! This library exists so that both programs link one copy of that protocol; it is not
//! an API for other crates. The protocol carries this build's version and a host from
//! another build refuses to serve, so it may change in any release.

pub mod native_wire;
