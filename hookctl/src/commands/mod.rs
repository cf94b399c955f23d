//! One module per subcommand; each builds what it needs and calls the library.

pub(crate) mod check;
pub(crate) mod list;
pub(crate) mod run;
pub(crate) mod simulate;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use hooks_core::{Registry, RegistryBuilder};

use crate::cli::UsageError;

pub(crate) fn registry(dir: &Path, timeout: Option<Duration>) -> Registry {
    RegistryBuilder::new().hooks_dir(dir).timeout(timeout).build()
}

/// Reads `--input FILE` (`-` is stdin).
pub(crate) fn read_input(path: Option<&Path>) -> Result<Option<Vec<u8>>, UsageError> {
    let Some(path) = path else { return Ok(None) };
    let mut data = Vec::new();
    let result = if path == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut data).map(drop)
    } else {
        std::fs::read(path).map(|d| data = d)
    };
    result.map_err(|e| UsageError(format!("cannot read input `{}`: {e}", path.display())))?;
    Ok(Some(data))
}
