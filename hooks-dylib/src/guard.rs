//! The input behind a guard page, for testing plugins (`DylibHook::with_guarded_input`):
//! the byte after its NUL is unmapped, so a read past the end crashes at once instead of
//! reading whatever follows in the heap; after the call the whole input is made
//! unreadable and never unmapped, so a plugin that kept the pointer crashes when it
//! reads it later instead of reading memory reused for something else.

use std::ptr::NonNull;

/// An input copy whose NUL byte is the last readable byte before a `PROT_NONE` page.
pub(crate) struct GuardedInput {
    map: NonNull<libc::c_void>,
    map_len: usize,
    data: *const u8,
    len: usize,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(4096)
}

impl GuardedInput {
    /// Copies `input` in; `None` when the kernel refuses the mapping.
    pub(crate) fn new(input: &[u8]) -> Option<Self> {
        let page = page_size();
        let data_pages = (input.len() + 1).div_ceil(page);
        let map_len = (data_pages + 1) * page;
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return None;
        }
        let map = NonNull::new(map)?;
        let guard = data_pages * page;
        let start = guard - (input.len() + 1);
        // SAFETY: `start..guard` lies within the mapping's first `data_pages` pages,
        // which are readable and writable; the source does not overlap a fresh mapping.
        unsafe {
            let base = map.as_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(input.as_ptr(), base.add(start), input.len());
            *base.add(guard - 1) = 0;
            // SAFETY: the last page of the mapping, page-aligned.
            if libc::mprotect(base.add(guard).cast(), page, libc::PROT_NONE) != 0 {
                libc::munmap(map.as_ptr(), map_len);
                return None;
            }
        }
        Some(GuardedInput {
            map,
            map_len,
            // SAFETY: within the mapping (see above).
            data: unsafe { map.as_ptr().cast::<u8>().add(start) },
            len: input.len(),
        })
    }

    /// The input's first byte; `len()` bytes follow, then a NUL, then the guard page.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.data
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for GuardedInput {
    /// Makes the input unreadable and leaves it mapped: a pointer the plugin kept now
    /// faults, and the addresses are never handed out again. Testing only: each call
    /// leaves its pages behind.
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`, page-aligned; nothing reads it after
        // the call that was given it returned.
        unsafe { libc::mprotect(self.map.as_ptr(), self.map_len, libc::PROT_NONE) };
    }
}

// SAFETY: the mapping is owned by this value alone; the raw pointers are addresses in it.
unsafe impl Send for GuardedInput {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nul_is_the_last_byte_before_the_guard_page() {
        for input in [&b""[..], b"<domain/>", &[b'x'; 4095], &[b'y'; 4096], &[b'z'; 100_000]] {
            let guarded = GuardedInput::new(input).expect("mmap");
            // SAFETY: `len() + 1` readable bytes start at `as_ptr()` (the input and its NUL).
            let copy = unsafe { std::slice::from_raw_parts(guarded.as_ptr(), guarded.len() + 1) };
            assert_eq!(&copy[..input.len()], input);
            assert_eq!(copy[input.len()], 0);
            let end = guarded.as_ptr() as usize + guarded.len() + 1;
            assert_eq!(end % page_size(), 0, "the byte after the NUL starts the guard page");
        }
    }
}
