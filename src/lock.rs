//! One run per outputs directory: an exclusive `flock` on
//! `outputs/.transum.lock`, which holds the owner's pid for the message the
//! next run prints. The kernel drops the lock when its process dies, however
//! it dies, so a lock left by a killed run is recovered without guessing from
//! pids or timestamps; the stale pid in the file is only ever informational.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held while a run writes into its outputs directory; released on drop.
pub struct OutputsLock {
    _file: File,
    pub path: PathBuf,
}

fn flock(f: &File, blocking: bool) -> std::io::Result<()> {
    let op = libc::LOCK_EX | if blocking { 0 } else { libc::LOCK_NB };
    loop {
        // SAFETY: flock on a valid, open file descriptor owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl OutputsLock {
    /// Lock `dir` for this process. With `wait`, queue behind a running
    /// holder; without, fail at once naming the holder's pid.
    pub fn acquire(dir: &Path, wait: bool) -> Result<Self> {
        let path = dir.join(".transum.lock");
        let io = |what: &str, e: std::io::Error| {
            Error::file(
                &path,
                what.to_string(),
                "check permissions of the outputs directory",
                Some(Box::new(e)),
            )
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("cannot open the lock file", e))?;
        if let Err(e) = flock(&file, false) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io("cannot lock", e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().to_string();
            if !wait {
                return Err(Error::file(
                    dir,
                    format!(
                        "is in use by another transum run (pid {})",
                        if holder.is_empty() {
                            "unknown"
                        } else {
                            &holder
                        }
                    ),
                    "wait for that run to finish, or pass --wait to start when it does",
                    None,
                ));
            }
            tracing::warn!(
                "{}: in use by another transum run (pid {holder}); waiting for it (--wait)",
                dir.display()
            );
            flock(&file, true).map_err(|e| io("cannot lock", e))?;
        }
        file.set_len(0).map_err(|e| io("cannot write", e))?;
        file.rewind().map_err(|e| io("cannot write", e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| io("cannot write", e))?;
        file.sync_all().map_err(|e| io("cannot write", e))?;
        Ok(OutputsLock { _file: file, path })
    }
}
