//! Test-only failure injection at the mutation boundaries of a transaction.
//!
//! The rollback promise ("ruleset and sysctls end exactly as they were") is only worth
//! something if every step can be made to fail on demand. With the `failpoints` cargo
//! feature, setting `LOOPGATE_FAILPOINT=<step>` makes the named step fail; without the
//! feature this module compiles to nothing and the variable is ignored.

/// Returns true when the test hook asks `step` to fail.
#[cfg(feature = "failpoints")]
pub fn armed(step: &str) -> bool {
    std::env::var("LOOPGATE_FAILPOINT").is_ok_and(|v| v.split(',').any(|s| s == step))
}

/// Returns true when the test hook asks `step` to fail (never, in this build).
#[cfg(not(feature = "failpoints"))]
pub fn armed(_step: &str) -> bool {
    false
}

/// Fails with a recognisable error when the test hook asks `step` to fail.
pub fn check(step: &str) -> anyhow::Result<()> {
    if armed(step) {
        anyhow::bail!("injected failure at {step}");
    }
    Ok(())
}

/// Kills the process on the spot with SIGKILL (no unwinding, no rollback) when the test
/// hook `LOOPGATE_CRASH=<point>` names this point: a crash between two mutations.
pub fn crash_point(point: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("LOOPGATE_CRASH").is_ok_and(|v| v == point) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}
