//! `--follow`: new lines as they are logged, across rotations and truncation.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::filter::Ctx;
use super::output::Out;
use super::parse::{Event, Parsed, Source};
use super::read::{cannot_read, open, read_available, Lines, Piece};

/// How often `--follow` looks for new lines.
const POLL: Duration = Duration::from_millis(200);

/// A log followed by `--follow`: the file we read (the one at the path when we last
/// looked; `None` until it exists), and how far.
pub(super) struct Tail {
    pub(super) path: PathBuf,
    pub(super) current: Option<Current>,
    pub(super) lines: Lines,
    pub(super) source: Source,
    pub(super) complained: bool,
}

pub(super) struct Current {
    pub(super) file: File,
    pub(super) id: (u64, u64),
    pub(super) pos: u64,
}

pub(super) fn follow(ctx: &Ctx<'_>, tails: &mut [Tail], out: &mut Out) -> io::Result<()> {
    loop {
        std::thread::sleep(POLL);
        let mut events = Vec::new();
        for tail in tails.iter_mut() {
            tail.poll(ctx, &mut events);
        }
        if tails.len() > 1 {
            // Stable: each log's events stay in their order.
            events.sort_by_key(|e| e.time);
        }
        out.print(&events, true)?;
    }
}

impl Tail {
    /// Reads what is new, and the file now at the path once the old one is read.
    fn poll(&mut self, ctx: &Ctx<'_>, events: &mut Vec<Event>) {
        let source = &mut self.source;
        let mut take = |piece: Piece<'_>| match ctx.event(piece, source) {
            Parsed::Event(event) | Parsed::Unreadable(Some(event)) => events.push(event),
            Parsed::Blank | Parsed::Filtered | Parsed::Unreadable(None) => {}
        };
        let take = &mut take;
        let at_path = fs::metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if let Some(current) = &mut self.current {
            let read = read_available(&mut current.file, &mut self.lines, take);
            match read {
                Ok(n) => current.pos += n,
                Err(e) => complain(&self.path, &mut self.complained, &e),
            }
            match at_path {
                // Rotated (renamed, a new file in its place): what was left of the old
                // one has just been read; go on with the new one.
                Some(id) if id != current.id => {
                    self.lines.finish(take);
                    self.current = None;
                }
                // Truncated in place (logrotate's copytruncate): start again.
                Some(_) => {
                    let len = current.file.metadata().map_or(current.pos, |m| m.len());
                    if len < current.pos {
                        self.lines = Lines::default();
                        current.pos = current.file.seek(SeekFrom::Start(0)).unwrap_or(0);
                    }
                }
                // Renamed and not yet replaced: keep reading the old one.
                None => {}
            }
        }
        if self.current.is_none() && at_path.is_some() {
            match open(&self.path) {
                Ok((mut file, id)) => {
                    let pos = match read_available(&mut file, &mut self.lines, take) {
                        Ok(n) => n,
                        Err(e) => {
                            complain(&self.path, &mut self.complained, &e);
                            0
                        }
                    };
                    self.current = Some(Current { file, id, pos });
                    self.complained = false;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => complain(&self.path, &mut self.complained, &e),
            }
        }
    }
}

/// Says once that a followed log cannot be read (we keep trying).
fn complain(path: &Path, complained: &mut bool, e: &io::Error) {
    if !*complained {
        eprintln!("hookctl: warning: {}; still trying", cannot_read(path, e));
        *complained = true;
    }
}
