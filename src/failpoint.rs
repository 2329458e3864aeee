//! Fault injection for the crash tests: `TRANSUM_FAILPOINT=<name>` makes the
//! process send itself SIGKILL (`kill -9`: no destructors, no flushing, no
//! lock released by us) when it reaches the point of that name.
//! Unset, a failpoint is one cached environment lookup.
//!
//! Points: `after-article:N` (the N-th article, 1-based, is written and
//! recorded in the manifest), `mid-write:FILE` (half of FILE's bytes are in
//! its temporary file, not yet renamed), `before-summary`.

use std::sync::OnceLock;

static SPEC: OnceLock<Option<String>> = OnceLock::new();

/// Abort here if `TRANSUM_FAILPOINT` names this point.
pub fn hit(name: &str) {
    let spec = SPEC.get_or_init(|| std::env::var("TRANSUM_FAILPOINT").ok());
    if spec.as_deref() == Some(name) {
        eprintln!("transum: failpoint {name}: SIGKILL (TRANSUM_FAILPOINT)");
        // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, so this
        // does not return.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::process::abort();
    }
}

/// Whether any failpoint is set (so callers can skip building point names).
pub fn armed() -> bool {
    SPEC.get_or_init(|| std::env::var("TRANSUM_FAILPOINT").ok())
        .is_some()
}
