//! The directories a plugin tells the dynamic loader to search first (its
//! `DT_RUNPATH`, or `DT_RPATH`), and the libraries it would load from them: they run as
//! the plugin does, so they must pass the trust rule too. A root-owned plugin linked
//! with `-rpath /home/u/lib` would otherwise load that user's library as root.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use virt_hooks_core::backend::{TrustPolicy, Untrusted};

const ROLE: &str = "library search path (DT_RUNPATH/DT_RPATH)";

/// Checks `plugin`'s own search path and the libraries it names that are found there.
/// A file that is not ELF, or cannot be read, is left to `dlopen` to report.
pub(crate) fn check(plugin: &Path, trust: &TrustPolicy) -> Result<(), Untrusted> {
    let Ok(bytes) = fs::read(plugin) else { return Ok(()) };
    let Ok(elf) = goblin::elf::Elf::parse(&bytes) else {
        return Ok(());
    };
    // ld.so ignores DT_RPATH when DT_RUNPATH is there.
    let lists = if elf.runpaths.is_empty() {
        &elf.rpaths
    } else {
        &elf.runpaths
    };
    let origin = plugin.parent().unwrap_or(Path::new("/"));
    for list in lists {
        for raw in list.split(':') {
            let dir = expand(raw, origin).map_err(|why| {
                let e = io::Error::other(format!("`{raw}`: {why}"));
                Untrusted::dependency(plugin, ROLE, Untrusted::io(plugin, plugin, e))
            })?;
            check_dir(trust, &dir).map_err(|why| Untrusted::dependency(plugin, ROLE, why))?;
            for library in &elf.libraries {
                let file = dir.join(library);
                if fs::symlink_metadata(&file).is_ok() {
                    trust
                        .check_file(&file)
                        .map_err(|why| Untrusted::dependency(plugin, "library", why))?;
                }
            }
        }
    }
    Ok(())
}

/// One search-path entry as ld.so reads it, or why it cannot be checked.
fn expand(raw: &str, origin: &Path) -> Result<PathBuf, &'static str> {
    let origin = origin.to_string_lossy();
    let text = raw.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin);
    if text.contains('$') {
        return Err("names $LIB or $PLATFORM, which depend on the machine");
    }
    let path = PathBuf::from(text);
    // Empty and relative entries are relative to the working directory of whoever
    // loads the plugin.
    if !path.is_absolute() {
        return Err("a relative directory is searched from the working directory");
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("it holds `..`");
    }
    Ok(path)
}

/// A directory in the search path; a missing one must not be one someone else could
/// make, so its nearest existing ancestor is checked instead.
fn check_dir(trust: &TrustPolicy, dir: &Path) -> Result<(), Untrusted> {
    let mut existing = dir;
    while fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(up) => existing = up,
            None => return Ok(()),
        }
    }
    trust.check_dir(existing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expand_like_ld_so_or_are_refused() {
        let origin = Path::new("/etc/libvirt/hooks/qemu.plugins");
        assert_eq!(expand("$ORIGIN/lib", origin).unwrap(), origin.join("lib"));
        assert_eq!(expand("${ORIGIN}", origin).unwrap(), origin);
        assert_eq!(expand("/usr/lib/x", origin).unwrap(), Path::new("/usr/lib/x"));
        for bad in ["", "lib", "./lib", "$LIB/x", "/opt/$PLATFORM", "/opt/../home/u"] {
            assert!(expand(bad, origin).is_err(), "{bad:?}");
        }
    }
}
