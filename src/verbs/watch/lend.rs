//! The table held and lent: watch adopts loopgate's table with the owner flag where the
//! kernel has it, and lends the owning socket over [`SOCKET`] to a command that changes
//! the table while watch runs, recording the commits made meanwhile as its own.

use crate::kernel::seam::Kernel;

/// The socket, in the namespace's state directory, over which a running watch lends
/// its table to a command that changes it (see [`crate::rpc`]).
pub const SOCKET: &str = "watch.sock";
/// Serves one command waiting to borrow the table, if any: lends the owning socket
/// (or says the table is not held) and waits until the command is done with it, at
/// most [`crate::rpc::LEASE_LIMIT`]. The commits made meanwhile are recorded as
/// watch's own: no other socket can change a held table, so none of them is foreign.
pub(super) fn lend(kernel: &crate::kernel::seam::System, server: &crate::rpc::Server) {
    let borrower = match server.accept() {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            eprintln!("loopgate watch: {}", crate::error::one_line(&e));
            return;
        }
    };
    let (pid, command) = (
        borrower.peer.pid,
        borrower.command.escape_debug().to_string(),
    );
    let before = kernel.generation().ok();
    let lent = kernel.with_held(|owner| match owner {
        None => borrower.not_held().map(|()| None),
        Some(o) => borrower
            .lend(o.lendable(), o.portid(), crate::rpc::LEASE_LIMIT)
            .map(Some),
    });
    if let Err(e) = kernel.with_held(|o| o.map_or(Ok(()), |o| o.settle())) {
        eprintln!(
            "loopgate watch: clearing the table's socket after a lease: {}",
            crate::error::one_line(&e)
        );
    }
    if let (Some(before), Ok(after)) = (before, kernel.generation()) {
        kernel.record_lent_commits(before, after);
    }
    match lent {
        Ok(None) => {}
        Ok(Some(crate::rpc::LeaseEnd::Returned(took))) => eprintln!(
            "loopgate watch: lent table ip loopgate to pid {pid} (`{command}`) for {} ms",
            took.as_millis()
        ),
        Ok(Some(crate::rpc::LeaseEnd::Expired)) => eprintln!(
            "loopgate watch: pid {pid} (`{command}`) kept table ip loopgate past {} s; watch stopped waiting and commits through the socket again (the command's copy works until it closes it)",
            crate::rpc::LEASE_LIMIT.as_secs()
        ),
        Err(e) => eprintln!(
            "loopgate watch: lending table ip loopgate to pid {pid}: {}",
            crate::error::one_line(&e)
        ),
    }
}

/// Adopts loopgate's table with the owner flag where the kernel has it (Linux 6.9+):
/// while watch runs, `nft flush ruleset` skips the table and every other process gets
/// EPERM changing it. Returns the owner's port id; `None` on older kernels (the table
/// is then protected by repair only: watch closes the interfaces the moment another
/// process changes it, restores it and reopens them). `quiet`: a retry, which says only
/// that it succeeded. From then on `kernel` changes the table through the owner.
pub(super) fn hold_table(kernel: &mut crate::kernel::seam::System, quiet: bool) -> Option<u32> {
    match crate::kernel::nft::probe_owner_support() {
        Ok(true) => match crate::kernel::nft::Owner::adopt() {
            Ok(owner) => {
                let port = owner.portid();
                kernel.hold(owner);
                eprintln!("loopgate watch: holds table ip loopgate (owner flag): no other process can flush, switch off or edit it while watch runs");
                Some(port)
            }
            Err(_) if quiet => None,
            Err(e) => {
                eprintln!(
                    "loopgate watch: cannot hold table ip loopgate ({}); protecting it by repair only",
                    crate::error::one_line(&e)
                );
                None
            }
        },
        Ok(false) if quiet => None,
        Ok(false) => {
            eprintln!("loopgate watch: this kernel cannot hold a table (NFT_TABLE_F_OWNER with PERSIST needs Linux 6.9); protecting it by repair only");
            None
        }
        Err(_) if quiet => None,
        Err(e) => {
            eprintln!(
                "loopgate watch: cannot tell whether the kernel can hold a table ({}); protecting it by repair only",
                crate::error::one_line(&e)
            );
            None
        }
    }
}
