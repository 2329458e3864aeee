//! One corpus over many machines: which articles a shard owns, where its
//! index and count come from (a flag, a Slurm job array, a Kubernetes Indexed
//! Job), and the per-shard lock that works on a shared filesystem.
//!
//! Assignment is a stable hash of the article's file name (the first 8 bytes
//! of its sha256, modulo the shard count), so adding or removing an article
//! never moves another one to a different shard, and every machine computes
//! the same assignment without talking to the others.
//!
//! The lock is a file, `outputs/shards/I-of-N.lock`, made with `link(2)`
//! (which fails when the name exists, atomically, on NFS too, unlike `flock`)
//! from a temporary file in the same directory. Its holder refreshes its
//! mtime every [`HEARTBEAT`]; a lock whose holder is a dead process on this
//! host, or whose mtime is older than [`STALE_AFTER`] by the filesystem's own
//! clock (read from a probe file, so clock skew between machines does not
//! matter), is taken over. Talks to: the pipeline (`pipeline::run` with
//! `RunOptions::shard`, `pipeline::merge`) and the CLI (`--shard`, `--shards`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How often a holder refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A lock not refreshed for this long belongs to a dead run.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Shard `index` (0-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Where a shard's index and count came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSource {
    /// `--shard I/N`.
    Flag,
    /// A Slurm job array (`SLURM_ARRAY_TASK_*`).
    Slurm,
    /// A Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, with `--shards N`).
    Kubernetes,
}

impl ShardSource {
    pub fn describe(&self) -> &'static str {
        match self {
            ShardSource::Flag => "--shard",
            ShardSource::Slurm => "Slurm job array (SLURM_ARRAY_TASK_ID)",
            ShardSource::Kubernetes => "Kubernetes Indexed Job (JOB_COMPLETION_INDEX)",
        }
    }
}

/// The shard (0-based) that owns the article named `file_name` among `count`.
pub fn shard_of(file_name: &str, count: usize) -> usize {
    use sha2::Digest;
    let h = sha2::Sha256::digest(file_name.as_bytes());
    let v = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (v % count.max(1) as u64) as usize
}

impl Shard {
    /// Parse `I/N` (0 <= I < N).
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            Error::setting(
                format!("--shard {s:?} is not I/N"),
                "give the shard's 0-based index and the shard count, e.g. --shard 0/4 .. --shard 3/4",
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count)
    }

    /// A checked shard.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(Error::setting(
                format!("shard {index} of {count} does not exist"),
                "shards are numbered 0 to N-1 and N is at least 1",
            ));
        }
        Ok(Shard { index, count })
    }

    /// The shard of this process: `flag` (`--shard I/N`) when given, else the
    /// scheduler's environment as `var` reads it: a Slurm job array, or a
    /// Kubernetes Indexed Job with `shards` (`--shards N`: its pods cannot see
    /// the count). None when nothing asks for sharding.
    pub fn resolve(
        flag: Option<&str>,
        shards: Option<usize>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(Shard, ShardSource)>> {
        if let Some(f) = flag {
            let s = Shard::parse(f)?;
            if shards.is_some_and(|n| n != s.count) {
                return Err(Error::setting(
                    format!("--shard {f} and --shards {} disagree", shards.unwrap_or(0)),
                    "drop --shards (--shard names the count)",
                ));
            }
            return Ok(Some((s, ShardSource::Flag)));
        }
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::setting(
                        format!("{name}={v:?} is not a number"),
                        "run under the scheduler that sets it, or pass --shard I/N",
                    )
                }),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let max = num("SLURM_ARRAY_TASK_MAX")?;
            let count = match (num("SLURM_ARRAY_TASK_COUNT")?, max) {
                (Some(c), Some(max)) if max + 1 - min != c => {
                    return Err(Error::setting(
                        format!(
                            "the Slurm array {min}-{max} has {c} tasks, not one per index (a step or a list?)"
                        ),
                        "submit a contiguous array (--array=0-N or 1-N, optionally %K), or pass --shard I/N",
                    ))
                }
                (Some(c), _) => c,
                (None, Some(max)) => max + 1 - min,
                (None, None) => shards.ok_or_else(|| {
                    Error::setting(
                        "SLURM_ARRAY_TASK_ID is set but not the array's size",
                        "pass --shards N (the number of array tasks) or --shard I/N",
                    )
                })?,
            };
            if shards.is_some_and(|n| n != count) {
                return Err(Error::setting(
                    format!(
                        "--shards {} but the Slurm array has {count} tasks",
                        shards.unwrap_or(0)
                    ),
                    "drop --shards, or make the array match it",
                ));
            }
            if id < min {
                return Err(Error::setting(
                    format!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"),
                    "pass --shard I/N",
                ));
            }
            return Ok(Some((Shard::new(id - min, count)?, ShardSource::Slurm)));
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or_else(|| {
                Error::setting(
                    format!("JOB_COMPLETION_INDEX={index} is set but the number of shards is not"),
                    "pass --shards N with N the Job's completions (an Indexed Job's pods cannot see it)",
                )
            })?;
            return Ok(Some((Shard::new(index, count)?, ShardSource::Kubernetes)));
        }
        match shards {
            Some(n) => Err(Error::setting(
                format!("--shards {n} without a shard index"),
                "pass --shard I/N, or run under a Slurm job array or a Kubernetes Indexed Job",
            )),
            None => Ok(None),
        }
    }

    /// Whether this shard owns the article named `file_name`.
    pub fn owns(&self, file_name: &str) -> bool {
        shard_of(file_name, self.count) == self.index
    }

    /// `I-of-N`, the stem of its manifest and lock.
    pub fn stem(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// `outputs/shards/`.
    pub fn dir(outputs: &Path) -> PathBuf {
        outputs.join("shards")
    }

    /// `outputs/shards/I-of-N.json`.
    pub fn manifest_path(&self, outputs: &Path) -> PathBuf {
        Shard::dir(outputs).join(format!("{}.json", self.stem()))
    }

    /// Parse a manifest file name `I-of-N.json`.
    pub fn from_manifest_name(name: &str) -> Option<Shard> {
        let stem = name.strip_suffix(".json")?;
        let (i, n) = stem.split_once("-of-")?;
        Shard::new(i.parse().ok()?, n.parse().ok()?).ok()
    }
}

/// Who holds a shard lock (the lock file's content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    /// Unique per acquisition, so a takeover can tell two holders apart.
    token: String,
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    }
}

/// Whether process `pid` exists on this host.
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Held while a shard writes; refreshed by a heartbeat thread, removed on drop.
pub struct ShardLock {
    path: PathBuf,
    holder: Holder,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl ShardLock {
    /// Lock shard `shard` of `outputs`. A live holder elsewhere makes this
    /// fail naming it, or, with `wait`, poll until it is gone or stale.
    pub fn acquire(outputs: &Path, shard: &Shard, wait: bool) -> Result<ShardLock> {
        let dir = Shard::dir(outputs);
        let io = |p: &Path, what: &str, e: std::io::Error| {
            Error::file(
                p,
                what.to_string(),
                "check that the outputs directory is writable from this machine",
                Some(Box::new(e)),
            )
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, "cannot be created", e))?;
        let path = dir.join(format!("{}.lock", shard.stem()));
        let host = hostname();
        let pid = std::process::id();
        let token = format!(
            "{host}-{pid}-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let holder = Holder { host, pid, token };
        let tmp = dir.join(format!(".{}.lock.{}", shard.stem(), holder.token));
        std::fs::write(&tmp, serde_json::to_vec(&holder).expect("serializes"))
            .map_err(|e| io(&tmp, "cannot be written", e))?;
        let result = loop {
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => break Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => break Err(io(&path, "cannot be created", e)),
            }
            // Someone holds it: dead or stale holders are taken over.
            let current = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
            let stale = match &current {
                Some(h) if h.host == holder.host && !alive(h.pid) => true,
                _ => lock_age(&path, &dir).is_some_and(|age| age > STALE_AFTER),
            };
            if stale {
                if take_over(&path, &dir, current.as_ref()) {
                    tracing::warn!(
                        "{}: taking over from a dead run ({})",
                        path.display(),
                        current
                            .as_ref()
                            .map(|h| format!("host {}, pid {}", h.host, h.pid))
                            .unwrap_or_else(|| "unreadable holder".into())
                    );
                }
                continue;
            }
            let who = current
                .as_ref()
                .map(|h| format!("host {}, pid {}", h.host, h.pid))
                .unwrap_or_else(|| "a run whose lock is still being written".into());
            if !wait {
                break Err(Error::file(
                    &path,
                    format!("shard {} is being run by another transum ({who})", shard.stem()),
                    format!(
                        "wait for it, or pass --wait; if its machine died, the lock is taken over once it is {}s old",
                        STALE_AFTER.as_secs()
                    ),
                    None,
                ));
            }
            tracing::warn!("{}: held by {who}; waiting (--wait)", path.display());
            std::thread::sleep(Duration::from_secs(2));
        };
        let _ = std::fs::remove_file(&tmp);
        result?;
        let stop = Arc::new(AtomicBool::new(false));
        let beat = {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::Builder::new()
                .name("shard-lock".into())
                .spawn(move || {
                    let step = Duration::from_millis(250);
                    let mut since = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(step);
                        since += step;
                        if since >= HEARTBEAT {
                            since = Duration::ZERO;
                            touch(&path);
                        }
                    }
                })
                .ok()
        };
        Ok(ShardLock {
            path,
            holder,
            stop,
            beat,
        })
    }
}

impl Drop for ShardLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = self.beat.take() {
            let _ = b.join();
        }
        // Only our own lock: after a takeover it is someone else's.
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Holder>(&b).ok())
            .is_some_and(|h| h == self.holder);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The shards of `outputs` running now: `(stem, holder)` for every lock
/// whose holder is neither a dead process on this host nor stale.
pub fn running(outputs: &Path) -> Vec<(String, String)> {
    let dir = Shard::dir(outputs);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let me = hostname();
    let mut out: Vec<(String, String)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".lock")?.to_string();
            Shard::from_manifest_name(&format!("{stem}.json"))?;
            let holder = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
            let dead = match &holder {
                Some(h) if h.host == me => !alive(h.pid),
                _ => lock_age(&e.path(), &dir).is_none_or(|a| a > STALE_AFTER),
            };
            (!dead).then(|| {
                let who = holder
                    .map(|h| format!("host {}, pid {}", h.host, h.pid))
                    .unwrap_or_default();
                (stem, who)
            })
        })
        .collect();
    out.sort();
    out
}

/// Set `path`'s mtime to now, by the filesystem's clock (UTIME_NOW lets an
/// NFS server use its own time).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a null times pointer sets both times to the current time.
        unsafe { libc::futimens(f.as_raw_fd(), std::ptr::null()) };
    }
}

/// How long ago the lock was last refreshed, by the filesystem's clock: a
/// probe file made now in the same directory gives "now".
fn lock_age(path: &Path, dir: &Path) -> Option<Duration> {
    let probe = dir.join(format!(".probe-{}-{}", hostname(), std::process::id()));
    std::fs::write(&probe, b"").ok()?;
    let now = std::fs::metadata(&probe).and_then(|m| m.modified()).ok();
    let _ = std::fs::remove_file(&probe);
    let then = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    now?.duration_since(then).ok()
}

/// Move a stale lock aside (an atomic rename in the same directory) and
/// delete it; false when it changed hands meanwhile (it is then put back).
fn take_over(path: &Path, dir: &Path, judged: Option<&Holder>) -> bool {
    let aside = dir.join(format!(
        ".stale-{}-{}-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        hostname(),
        std::process::id()
    ));
    if std::fs::rename(path, &aside).is_err() {
        return false; // someone else moved it first
    }
    let moved = std::fs::read(&aside)
        .ok()
        .and_then(|b| serde_json::from_slice::<Holder>(&b).ok());
    if moved.as_ref() != judged {
        // A new holder's fresh lock: give it back.
        let _ = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        return false;
    }
    let _ = std::fs::remove_file(&aside);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_outputs(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("transum-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn plant(outputs: &Path, shard: &Shard, host: &str, pid: u32, age: Duration) {
        let dir = Shard::dir(outputs);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.lock", shard.stem()));
        let h = Holder {
            host: host.into(),
            pid,
            token: format!("{host}-{pid}-planted"),
        };
        std::fs::write(&path, serde_json::to_vec(&h).unwrap()).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn a_shard_lock_is_exclusive_and_dead_holders_are_taken_over() {
        let out = temp_outputs("excl");
        let s = Shard { index: 1, count: 2 };
        let held = ShardLock::acquire(&out, &s, false).unwrap();
        let err = ShardLock::acquire(&out, &s, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("being run by another transum"), "{err}");
        // Another shard is independent.
        let other = ShardLock::acquire(&out, &Shard { index: 0, count: 2 }, false).unwrap();
        drop((held, other));
        assert!(!Shard::dir(&out).join("1-of-2.lock").exists());

        // A live holder on another machine: refused while its heartbeat is fresh ...
        plant(&out, &s, "elsewhere", 1, Duration::from_secs(5));
        assert!(ShardLock::acquire(&out, &s, false).is_err());
        // ... taken over once it is stale.
        plant(
            &out,
            &s,
            "elsewhere",
            1,
            STALE_AFTER + Duration::from_secs(30),
        );
        drop(ShardLock::acquire(&out, &s, false).unwrap());
        // A dead process on this host: taken over at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        plant(&out, &s, &hostname(), pid, Duration::ZERO);
        drop(ShardLock::acquire(&out, &s, false).unwrap());
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn the_environment_gives_the_shard() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::resolve(None, None, &slurm).unwrap(),
            Some((Shard { index: 2, count: 4 }, ShardSource::Slurm))
        );
        // The flag wins over the environment.
        assert_eq!(
            Shard::resolve(Some("0/2"), None, &slurm).unwrap(),
            Some((Shard { index: 0, count: 2 }, ShardSource::Flag))
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(
            Shard::resolve(None, Some(3), &k8s).unwrap(),
            Some((Shard { index: 1, count: 3 }, ShardSource::Kubernetes))
        );
        assert!(Shard::resolve(None, None, &k8s)
            .unwrap_err()
            .to_string()
            .contains("--shards N"));
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "6"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert!(Shard::resolve(None, None, &stepped).is_err());
        assert_eq!(Shard::resolve(None, None, &env(&[])).unwrap(), None);
        assert!(Shard::parse("3/3").is_err() && Shard::parse("1-3").is_err());
        assert_eq!(
            Shard::from_manifest_name("2-of-5.json"),
            Some(Shard { index: 2, count: 5 })
        );
    }
}
