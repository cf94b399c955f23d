//! Helpers for the conformance suites: throwaway hooks dirs with scripts that record
//! what they were called with.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use tempfile::TempDir;
use virt_hooks_core::{Registry, RegistryBuilder};

/// A temporary hooks dir.
#[derive(Debug)]
pub struct HooksTree {
    dir: TempDir,
}

impl Default for HooksTree {
    fn default() -> Self {
        Self::new()
    }
}

impl HooksTree {
    /// An empty hooks dir.
    pub fn new() -> Self {
        virt_hooks_exec::link();
        virt_hooks_dylib::link();
        virt_hooks_wasm::link();
        HooksTree {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The hooks dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an executable file at `rel` (creating parent dirs) and returns its path.
    pub fn script(&self, rel: &str, body: &str) -> PathBuf {
        self.file(rel, body, 0o755)
    }

    /// Writes a file with a mode.
    pub fn file(&self, rel: &str, body: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, body).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    /// A file in the dir for hooks to write to (outside any `<driver>.d`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// A script that appends `<its file name> <args>` to the log and succeeds.
    pub fn logging(&self, rel: &str) -> PathBuf {
        self.logging_exit(rel, 0)
    }

    /// A script that appends `<its file name> <args>` to the log and exits with `code`.
    pub fn logging_exit(&self, rel: &str, code: i32) -> PathBuf {
        let log = self.log_path();
        self.script(
            rel,
            &format!(
                "#!/bin/sh\ncat > /dev/null\necho \"${{0##*/}} $*\" >> '{}'\nexit {code}\n",
                log.display()
            ),
        )
    }

    /// The log's lines so far.
    pub fn log(&self) -> Vec<String> {
        fs::read_to_string(self.log_path())
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// A registry over this dir with every linked backend.
    pub fn registry(&self) -> Registry {
        RegistryBuilder::new().hooks_dir(self.path()).build()
    }
}
