//! The libc calls `hookctl` makes itself, each behind a small wrapper, with the reason
//! it is sound beside its `unsafe` block: the local time for `hookctl log`.

/// The local calendar time of `secs` since the epoch (`localtime_r`), `None` when libc
/// cannot represent it.
pub(crate) fn local_tm(secs: libc::time_t) -> Option<libc::tm> {
    // SAFETY: `tm` is a plain C struct of integers and one pointer, for which all zeroes
    // is a valid value (the pointer null).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live, properly aligned values of the right types, and
    // localtime_r writes only to `tm`. It reads the environment (`TZ`), which nothing in
    // hookctl changes.
    let result = unsafe { libc::localtime_r(&secs, &mut tm) };
    (!result.is_null()).then_some(tm)
}
