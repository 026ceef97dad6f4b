//! The host as a pass of watch sees it, with the container runtimes' networks as the
//! background cache last heard of them: no runtime call runs on the loop that guards.

use crate::kernel::host::HostInterfaces;
use crate::spec::{self};

/// The host as a pass of watch sees it: the interfaces read for the pass, and the
/// runtimes' networks as the [`RuntimeCache`](crate::runtime::RuntimeCache)
/// last heard of them, so that no runtime call runs on the loop that guards.
pub(super) struct CachedRuntimes<'a> {
    pub(super) host: &'a HostInterfaces,
    pub(super) runtimes: &'a crate::runtime::RuntimeCache,
    /// Bridges re-created since their runtime last described them (see
    /// [`spec::Host::unsettled`]).
    pub(super) unsettled: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl crate::input::Interfaces for CachedRuntimes<'_> {
    fn ipv4_addresses(&self, name: &str) -> Option<Vec<std::net::Ipv4Addr>> {
        self.host.ipv4_addresses(name)
    }

    fn owns(&self, addr: std::net::Ipv4Addr) -> bool {
        self.host.owns(addr)
    }

    fn host_gateway(&self) -> Option<std::net::Ipv4Addr> {
        self.host.host_gateway()
    }
}

impl spec::Host for CachedRuntimes<'_> {
    fn interface_names(&self) -> Vec<String> {
        self.host.interface_names()
    }

    fn runtime_network(
        &self,
        runtime: crate::kernel::runtime::Runtime,
        name: &str,
    ) -> std::result::Result<Option<crate::kernel::runtime::RuntimeNet>, String> {
        let (answer, heard_at) = self.runtimes.lookup(runtime, name);
        if let Ok(Some(net)) = &answer {
            let now = crate::kernel::sysctl::ifindex_of(&net.bridge);
            if now.is_some() && now != heard_at {
                self.unsettled.borrow_mut().insert(net.bridge.clone());
            }
        }
        answer
    }

    fn unsettled(&self) -> std::collections::BTreeSet<String> {
        self.unsettled.borrow().clone()
    }
}
