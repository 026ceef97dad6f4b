//! `loopgate watch`: keep the recorded grants in force while the host runs.
//!
//! Each wake-up (a link or ruleset event, or a 250 ms tick for sysctl changes, which
//! raise no event) compares the kernel with what the namespace's grants require and
//! repairs the difference in the safe order: the table first, then, only once the guard
//! is verified in the kernel, route_localnet. An interface whose guard cannot be put
//! back is closed (route_localnet=0): watch never fails open. Each repair is one line.

use super::open_store;
use crate::kernel::{host, monitor::Monitor, nft, sysctl};
use crate::plan;
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Sysctl changes raise no netlink event; this bounds how long one goes unnoticed.
const TICK: Duration = Duration::from_millis(250);

pub fn run() -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut monitor = Monitor::new()?;
    let mut first = true;
    while !STOP.load(Ordering::SeqCst) {
        if let Err(e) = repair() {
            eprintln!(
                "loopgate watch: repair failed: {}",
                crate::error::one_line(&e)
            );
        }
        if std::mem::take(&mut first) {
            // After the first pass, so "started" means "subscribed and converged once".
            eprintln!("loopgate watch: started");
        }
        monitor.wait(TICK);
    }
    eprintln!("loopgate watch: stopped; the policy stays in place");
    Ok(())
}

/// Brings the kernel back to what the recorded grants require, if it drifted.
pub fn repair() -> Result<()> {
    let (store, state) = open_store(true)?;
    if state.grants.is_empty() {
        return Ok(());
    }
    let Some(ruleset) = plan::ruleset(&state.grants) else {
        return Ok(());
    };
    let want = nft::planned_image(&ruleset);
    let started = Instant::now();
    // Each tick: cheap while the nftables generation vouches for the elements.
    let trust = state.vouch.as_ref().map(|v| (v, &want));
    let snapshot = nft::snapshot(trust)?;
    let mut guarded = snapshot.image().as_ref() == Some(&want);
    if guarded && !snapshot.vouched() {
        // Read back in full (something committed since): vouch for it from here on, or
        // every tick would read a large table back again.
        if let Some(elements) = want.elements.digest() {
            let vouch = Some(nft::Vouch {
                generation: snapshot.generation(),
                elements,
            });
            store.save(&crate::state::State {
                vouch,
                ..state.clone()
            })?;
        }
    }
    if !guarded {
        match nft::apply(Some(&ruleset)) {
            Ok(vouch) => {
                // Verify by reading everything back, not by trusting the ACK.
                guarded = nft::snapshot(None)?.image().as_ref() == Some(&want);
                if guarded {
                    store.save(&crate::state::State {
                        vouch,
                        ..state.clone()
                    })?;
                }
                eprintln!(
                    "loopgate watch: table ip loopgate was missing or altered; restored in {} ms{}",
                    started.elapsed().as_millis(),
                    if guarded {
                        ""
                    } else {
                        " but it does not read back as planned"
                    }
                );
            }
            Err(e) => eprintln!(
                "loopgate watch: cannot restore table ip loopgate: {}",
                crate::error::one_line(&e)
            ),
        }
    }
    let ifaces = host::HostInterfaces::read()?;
    for iface in plan::interfaces(&state.grants) {
        if crate::input::Interfaces::ipv4_addresses(&ifaces, &iface).is_none() {
            continue; // gone; handled when it reappears
        }
        let Ok(now) = sysctl::read(&iface) else {
            continue;
        };
        match (guarded, now) {
            (true, 0) => {
                sysctl::write(&iface, 1)?;
                eprintln!(
                    "loopgate watch: route_localnet on {iface} was 0 (re-created or changed by hand); set to 1 after verifying its guard"
                );
            }
            (false, 1) => {
                sysctl::write(&iface, 0)?;
                eprintln!("loopgate watch: cannot verify the guard of {iface}; turned route_localnet off on it");
            }
            _ => {}
        }
    }
    Ok(())
}
