//! Which files are read (the log, its rotations, for each driver's dispatcher) and how:
//! opened without blocking, split into lines of at most [`MAX_LINE`] bytes.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use virt_hooks_core::Driver;

use super::output::{shown, DETAIL_WIDTH, NAME_WIDTH};
use super::UsageError;

/// A longer line is not parsed: the dispatcher's own lines are a few KiB per plugin,
/// every text in them being capped.
pub(super) const MAX_LINE: usize = 1 << 20;
/// Of a longer line, how much of its start and of its end is kept, to read its time,
/// object and result (which serde_json writes after `hooks`, in key order).
pub(super) const KEPT_OF_LONG: usize = 64 << 10;

/// One audit log (its rotations beside it) and who writes it.
pub(super) struct Log {
    pub(super) path: PathBuf,
    /// `--file`, or the drivers whose dispatcher writes it.
    origin: Origin,
}

enum Origin {
    File,
    Drivers(Vec<&'static str>),
    Default,
}

/// `--file`; else the logs the dispatchers of `hooks_dir` write (each `<driver>.plugins/
/// hookctl.toml`'s `log =`, the default for a plugins dir without one), deduplicated;
/// else the default, unless the plugins dirs there write none (outside the system hooks
/// dir, without `log =`): then none, said on stderr, rather than the system's log.
pub(super) fn which_logs(hooks_dir: &Path, explicit_dir: bool, file: Option<&Path>) -> Result<Vec<Log>, UsageError> {
    if let Some(file) = file {
        return Ok(vec![Log {
            path: file.to_owned(),
            origin: Origin::File,
        }]);
    }
    if explicit_dir {
        crate::commands::require_dir(hooks_dir)?;
    }
    let mut logs: Vec<Log> = Vec::new();
    let mut unlogged = Vec::new();
    for driver in Driver::ALL {
        let Some(plugins) = crate::commands::plugins_dir(hooks_dir, driver) else {
            continue;
        };
        let path = match crate::config::settings(&plugins).log {
            Ok(Some(log)) => log,
            Ok(None) => {
                unlogged.push(driver.as_str());
                continue;
            }
            Err(e) => {
                eprintln!(
                    "hookctl: warning: {}: {} (its dispatcher writes no audit log until this is fixed; run `hookctl check`)",
                    shown(&e.path.to_string_lossy(), NAME_WIDTH),
                    shown(&e.message, DETAIL_WIDTH)
                );
                continue;
            }
        };
        match logs.iter_mut().find(|l| l.path == path) {
            Some(Log {
                origin: Origin::Drivers(d),
                ..
            }) => d.push(driver.as_str()),
            _ => logs.push(Log {
                path,
                origin: Origin::Drivers(vec![driver.as_str()]),
            }),
        }
    }
    if logs.is_empty() && !unlogged.is_empty() {
        eprintln!(
            "hookctl: no audit log: the dispatchers of {} ({}) write none, since it is not {} and their hookctl.toml names no `log`; `--file PATH` reads a log",
            shown(&hooks_dir.to_string_lossy(), NAME_WIDTH),
            unlogged.join(", "),
            shown(&crate::config::system_hooks_dir().to_string_lossy(), NAME_WIDTH)
        );
        return Ok(logs);
    }
    if logs.is_empty() {
        logs.push(Log {
            path: PathBuf::from(crate::config::DEFAULT_LOG),
            origin: Origin::Default,
        });
    }
    Ok(logs)
}

pub(super) struct Opened {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) id: (u64, u64),
}

/// What became of the log itself (not its rotations) in [`open_all`].
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Live {
    Opened,
    Missing,
    /// The same file as one read for another log (another spelling of its path).
    Duplicate,
    Unreadable,
}

/// Opens the log and its rotations, newest first (so that a rotation while we open
/// shows a file twice, skipped by its identity, rather than hiding one), and returns
/// them oldest first. A missing `--file` is an error; any other missing file is not.
pub(super) fn open_all(
    log: &Log,
    seen: &mut HashSet<(u64, u64)>,
    errors: &mut Vec<String>,
) -> Result<(Vec<Opened>, Live), UsageError> {
    let paths = std::iter::once(log.path.clone())
        .chain((1..=crate::audit::KEEP_ROTATIONS).map(|n| crate::audit::rotated(&log.path, n)));
    let mut files = Vec::new();
    let mut live_file = Live::Missing;
    for path in paths {
        let live = path == log.path;
        let state = match open(&path) {
            Ok((file, id)) if seen.insert(id) => {
                files.push(Opened { path, file, id });
                Live::Opened
            }
            Ok(_) => Live::Duplicate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if matches!(log.origin, Origin::File) && live {
                    return Err(UsageError(cannot_read(&path, &e)));
                }
                Live::Missing
            }
            Err(e) => {
                errors.push(cannot_read(&path, &e));
                Live::Unreadable
            }
        };
        if live {
            live_file = state;
        }
    }
    files.reverse();
    Ok((files, live_file))
}

/// Opens a log for reading without blocking on a FIFO or taking a terminal; only a
/// regular file is read.
pub(super) fn open(path: &Path) -> io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, (meta.dev(), meta.ino())))
}

pub(super) fn cannot_read(path: &Path, e: &io::Error) -> String {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        " (the audit log is readable by its owner and group only: try sudo)"
    } else {
        ""
    };
    format!(
        "cannot read `{}`: {e}{hint}",
        shown(&path.to_string_lossy(), NAME_WIDTH)
    )
}

pub(super) fn say_what_was_read(log: &Log, read: &[PathBuf], live_file: Live) {
    let origin = match &log.origin {
        Origin::File => String::new(),
        Origin::Default => " (the default log)".to_owned(),
        Origin::Drivers(drivers) => {
            let default = if log.path == Path::new(crate::config::DEFAULT_LOG) {
                ", the default log"
            } else {
                ""
            };
            format!(" (written for {}{default})", drivers.join(", "))
        }
    };
    let path = shown(&log.path.to_string_lossy(), NAME_WIDTH);
    if !read.is_empty() {
        let names: Vec<_> = read.iter().map(|p| shown(&p.to_string_lossy(), NAME_WIDTH)).collect();
        eprintln!("hookctl: read {}{origin}", names.join(", "));
    } else if live_file == Live::Missing {
        eprintln!("hookctl: {path} does not exist yet{origin}");
    } else if live_file == Live::Duplicate {
        eprintln!("hookctl: {path} is a file read above{origin}");
    }
}

/// Where a line starts in its file: its number (from 1) and its byte offset.
#[derive(Clone, Copy)]
pub(super) struct At {
    pub(super) line: u64,
    pub(super) byte: u64,
}

/// Splits what is read into lines, keeping at most [`MAX_LINE`] bytes of one; of a
/// longer one, its first and last [`KEPT_OF_LONG`] bytes.
#[derive(Default)]
pub(super) struct Lines {
    /// The line so far; for a long one, its start.
    partial: Vec<u8>,
    long: Option<Long>,
    /// Lines ended so far, and the offset of the next.
    done: u64,
    offset: u64,
}

/// A line past [`MAX_LINE`]: its length so far, and its last bytes (at most twice
/// [`KEPT_OF_LONG`], trimmed as it grows).
struct Long {
    pub(super) len: u64,
    pub(super) tail: Vec<u8>,
}

impl Long {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        let bytes = &bytes[bytes.len().saturating_sub(KEPT_OF_LONG)..];
        if self.tail.len() + bytes.len() > 2 * KEPT_OF_LONG {
            let drop = self.tail.len().saturating_sub(KEPT_OF_LONG - bytes.len());
            self.tail.drain(..drop);
        }
        self.tail.extend_from_slice(bytes);
    }

    fn tail(&self) -> &[u8] {
        &self.tail[self.tail.len().saturating_sub(KEPT_OF_LONG)..]
    }
}

pub(super) enum Piece<'a> {
    Line {
        text: &'a [u8],
        at: At,
    },
    /// Longer than [`MAX_LINE`] bytes: `len` bytes, of which `head` and `tail` were kept.
    TooLong {
        at: At,
        len: u64,
        head: &'a [u8],
        tail: &'a [u8],
    },
}

impl Lines {
    fn feed(&mut self, mut chunk: &[u8], each: &mut dyn FnMut(Piece<'_>)) {
        while let Some(nl) = memchr::memchr(b'\n', chunk) {
            self.end_line(&chunk[..nl], each);
            chunk = &chunk[nl + 1..];
        }
        self.extend(chunk);
    }

    pub(super) fn extend(&mut self, part: &[u8]) {
        if let Some(long) = &mut self.long {
            long.push(part);
        } else if self.partial.len() + part.len() > MAX_LINE {
            let mut long = Long {
                len: 0,
                tail: Vec::new(),
            };
            long.push(&self.partial);
            long.push(part);
            self.partial.truncate(KEPT_OF_LONG);
            self.partial.shrink_to(KEPT_OF_LONG);
            self.long = Some(long);
        } else {
            self.partial.extend_from_slice(part);
        }
    }

    /// Ends the line so far with `last`, its rest up to the newline.
    fn end_line(&mut self, last: &[u8], each: &mut dyn FnMut(Piece<'_>)) {
        let at = At {
            line: self.done + 1,
            byte: self.offset,
        };
        if self.long.is_none() && self.partial.len() + last.len() > MAX_LINE {
            self.extend(last);
        } else if let Some(long) = &mut self.long {
            long.push(last);
        } else if self.partial.is_empty() {
            each(Piece::Line { text: last, at });
            self.next_line(last.len() as u64);
            return;
        } else {
            self.partial.extend_from_slice(last);
        }
        let len = match self.long.take() {
            Some(long) => {
                each(Piece::TooLong {
                    at,
                    len: long.len,
                    head: &self.partial,
                    tail: long.tail(),
                });
                long.len
            }
            None => {
                each(Piece::Line {
                    text: &self.partial,
                    at,
                });
                self.partial.len() as u64
            }
        };
        self.partial.clear();
        self.next_line(len);
    }

    fn next_line(&mut self, len: u64) {
        self.done += 1;
        self.offset += len + 1;
    }

    /// The end of a file that will not grow: a last line without its newline counts.
    /// What comes next is another file.
    pub(super) fn finish(&mut self, each: &mut dyn FnMut(Piece<'_>)) {
        if self.long.is_some() || !self.partial.is_empty() {
            self.end_line(&[], each);
        }
        *self = Lines::default();
    }
}

/// Reads `file` to its end, feeding `lines`; the number of bytes read.
pub(super) fn read_available(file: &mut File, lines: &mut Lines, each: &mut dyn FnMut(Piece<'_>)) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                total += n as u64;
                lines.feed(&buf[..n], each);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
