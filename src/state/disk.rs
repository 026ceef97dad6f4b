//! The state file as written since version 3: [`State`] with each long allow list
//! replaced by a reference to its list file (see `lists`).
//!
//! The program's own types stay as they are: `Grant` and `Spec` are also printed by
//! `audit --json` and `plan`, whose output must not change. So the on-disk grant and
//! spec are mirrors of theirs, field for field, except `allow`; the conversions take
//! each type apart exhaustively, so a field added to one of them does not compile
//! until it is added here too. Reading accepts an inline list in any version, so a
//! version-2 file (all lists inline) reads through the same types.

use super::lists::{ListId, FILE_MIN};
use super::{Original, State, STATE_VERSION};
use crate::grant::{Grant, NetworkSelector, Proto};
use crate::kernel::nft::Vouch;
use crate::spec::{GuardSpec, Source, Spec};
use ipnetwork::Ipv4Network;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

/// An allow list as the state file writes it.
enum AllowOut<'a> {
    Inline(&'a [Ipv4Network]),
    Stored(ListId),
}

impl Serialize for AllowOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowOut::Inline(nets) => crate::grant::serialize_networks(nets, s),
            AllowOut::Stored(id) => s.serialize_str(&id.reference()),
        }
    }
}

/// An allow list as read: inline (`["192.0.2.0/24", ...]`) or a reference
/// (`"sha256:<hex>"`).
#[derive(Debug)]
enum AllowIn {
    Inline(Vec<Ipv4Network>),
    Stored(ListId),
}

impl<'de> Deserialize<'de> for AllowIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AllowIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of networks or \"sha256:<64 hex digits>\"")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AllowIn, A::Error> {
                let mut nets = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(n) = seq.next_element::<Ipv4Network>()? {
                    nets.push(n);
                }
                Ok(AllowIn::Inline(nets))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<AllowIn, E> {
                ListId::from_reference(text)
                    .map(AllowIn::Stored)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// Mirror of [`Grant`] for writing.
#[derive(Serialize)]
struct GrantOut<'a> {
    name: &'a str,
    iface: &'a str,
    proto: Proto,
    listen: Ipv4Addr,
    port: u16,
    to: SocketAddrV4,
    allow: AllowOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<&'a NetworkSelector>,
}

/// Mirror of [`Grant`] for reading (as `Grant`, unknown fields are ignored).
#[derive(Deserialize)]
struct GrantIn {
    name: String,
    iface: String,
    proto: Proto,
    listen: Ipv4Addr,
    port: u16,
    to: SocketAddrV4,
    allow: AllowIn,
    #[serde(default)]
    network: Option<NetworkSelector>,
}

/// Mirror of [`Spec`] for writing.
#[derive(Serialize)]
struct SpecOut<'a> {
    source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    interface: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<&'a NetworkSelector>,
    proto: Proto,
    port: u16,
    to: SocketAddrV4,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    host_gateway: bool,
    allow: AllowOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
}

/// Mirror of [`Spec`] for reading.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecIn {
    source: Source,
    #[serde(default)]
    name: Option<String>,
    interface: String,
    #[serde(default)]
    network: Option<NetworkSelector>,
    proto: Proto,
    port: u16,
    to: SocketAddrV4,
    #[serde(default)]
    listen: Option<Ipv4Addr>,
    #[serde(default)]
    host_gateway: bool,
    allow: AllowIn,
    #[serde(default)]
    origin: Option<String>,
}

/// Mirror of [`State`] for writing: always [`STATE_VERSION`].
#[derive(Serialize)]
pub(super) struct StateOut<'a> {
    version: u32,
    grants: Vec<GrantOut<'a>>,
    originals: &'a [Original],
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<Vec<GrantOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vouch: Option<Vouch>,
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    writers: &'a [u32],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    specs: Vec<SpecOut<'a>>,
    #[serde(skip_serializing_if = "<[GuardSpec]>::is_empty")]
    guards: &'a [GuardSpec],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    guarded: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    admitted: &'a [String],
}

/// Mirror of [`State`] for reading, versions 2 and 3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateIn {
    #[allow(dead_code)]
    version: u32,
    grants: Vec<GrantIn>,
    originals: Vec<Original>,
    #[serde(default)]
    pending: Option<Vec<GrantIn>>,
    #[serde(default)]
    vouch: Option<Vouch>,
    #[serde(default)]
    writers: Vec<u32>,
    #[serde(default)]
    specs: Vec<SpecIn>,
    #[serde(default)]
    guards: Vec<GuardSpec>,
    #[serde(default)]
    guarded: Vec<String>,
    #[serde(default)]
    admitted: Vec<String>,
}

/// `nets` as written: inline when short, else stored through `put`.
fn allow_out<'a, E>(
    nets: &'a [Ipv4Network],
    put: &mut impl FnMut(&[Ipv4Network]) -> Result<ListId, E>,
) -> Result<AllowOut<'a>, E> {
    if nets.len() < FILE_MIN {
        Ok(AllowOut::Inline(nets))
    } else {
        put(nets).map(AllowOut::Stored)
    }
}

fn grant_out<'a, E>(
    g: &'a Grant,
    put: &mut impl FnMut(&[Ipv4Network]) -> Result<ListId, E>,
) -> Result<GrantOut<'a>, E> {
    let Grant {
        name,
        iface,
        proto,
        listen,
        port,
        to,
        allow,
        network,
    } = g;
    Ok(GrantOut {
        name,
        iface,
        proto: *proto,
        listen: *listen,
        port: *port,
        to: *to,
        allow: allow_out(allow, put)?,
        network: network.as_ref(),
    })
}

fn spec_out<'a, E>(
    s: &'a Spec,
    put: &mut impl FnMut(&[Ipv4Network]) -> Result<ListId, E>,
) -> Result<SpecOut<'a>, E> {
    let Spec {
        source,
        name,
        interface,
        network,
        proto,
        port,
        to,
        listen,
        host_gateway,
        allow,
        origin,
    } = s;
    Ok(SpecOut {
        source: *source,
        name: name.as_deref(),
        interface,
        network: network.as_ref(),
        proto: *proto,
        port: *port,
        to: *to,
        listen: *listen,
        host_gateway: *host_gateway,
        allow: allow_out(allow, put)?,
        origin: origin.as_deref(),
    })
}

impl<'a> StateOut<'a> {
    /// `state` as written, each list of at least [`FILE_MIN`] networks handed to
    /// `put`, which stores it and returns its id (the first error stops).
    pub(super) fn new<E>(
        state: &'a State,
        mut put: impl FnMut(&[Ipv4Network]) -> Result<ListId, E>,
    ) -> Result<StateOut<'a>, E> {
        let State {
            version: _,
            grants,
            originals,
            pending,
            vouch,
            writers,
            specs,
            guards,
            guarded,
            admitted,
        } = state;
        let grants_out = |gs: &'a [Grant], put: &mut _| -> Result<Vec<GrantOut<'a>>, E> {
            gs.iter().map(|g| grant_out(g, put)).collect()
        };
        Ok(StateOut {
            version: STATE_VERSION,
            grants: grants_out(grants, &mut put)?,
            originals,
            pending: match pending {
                Some(p) => Some(grants_out(p, &mut put)?),
                None => None,
            },
            vouch: *vouch,
            writers,
            specs: specs
                .iter()
                .map(|s| spec_out(s, &mut put))
                .collect::<Result<_, E>>()?,
            guards,
            guarded,
            admitted,
        })
    }
}

fn allow_in<E>(
    allow: AllowIn,
    get: &mut impl FnMut(ListId) -> Result<Vec<Ipv4Network>, E>,
) -> Result<Vec<Ipv4Network>, E> {
    match allow {
        AllowIn::Inline(nets) => Ok(nets),
        AllowIn::Stored(id) => get(id),
    }
}

fn grant_in<E>(
    g: GrantIn,
    get: &mut impl FnMut(ListId) -> Result<Vec<Ipv4Network>, E>,
) -> Result<Grant, E> {
    let GrantIn {
        name,
        iface,
        proto,
        listen,
        port,
        to,
        allow,
        network,
    } = g;
    Ok(Grant {
        name,
        iface,
        proto,
        listen,
        port,
        to,
        allow: allow_in(allow, get)?,
        network,
    })
}

fn spec_in<E>(
    s: SpecIn,
    get: &mut impl FnMut(ListId) -> Result<Vec<Ipv4Network>, E>,
) -> Result<Spec, E> {
    let SpecIn {
        source,
        name,
        interface,
        network,
        proto,
        port,
        to,
        listen,
        host_gateway,
        allow,
        origin,
    } = s;
    Ok(Spec {
        source,
        name,
        interface,
        network,
        proto,
        port,
        to,
        listen,
        host_gateway,
        allow: allow_in(allow, get)?,
        origin,
    })
}

impl StateIn {
    /// The ids of the list files this state refers to.
    pub(super) fn refs(&self) -> BTreeSet<ListId> {
        let grants = self.grants.iter().chain(self.pending.iter().flatten());
        grants
            .map(|g| &g.allow)
            .chain(self.specs.iter().map(|s| &s.allow))
            .filter_map(|a| match a {
                AllowIn::Stored(id) => Some(*id),
                AllowIn::Inline(_) => None,
            })
            .collect()
    }

    /// The state, each referenced list fetched through `get` (the first error stops),
    /// as [`STATE_VERSION`] whatever version it was read from.
    pub(super) fn into_state<E>(
        self,
        mut get: impl FnMut(ListId) -> Result<Vec<Ipv4Network>, E>,
    ) -> Result<State, E> {
        let StateIn {
            version: _,
            grants,
            originals,
            pending,
            vouch,
            writers,
            specs,
            guards,
            guarded,
            admitted,
        } = self;
        let mut grants_in = |gs: Vec<GrantIn>| -> Result<Vec<Grant>, E> {
            gs.into_iter().map(|g| grant_in(g, &mut get)).collect()
        };
        let grants = grants_in(grants)?;
        let pending = match pending {
            Some(p) => Some(grants_in(p)?),
            None => None,
        };
        let specs = specs
            .into_iter()
            .map(|s| spec_in(s, &mut get))
            .collect::<Result<_, E>>()?;
        Ok(State {
            version: STATE_VERSION,
            grants,
            originals,
            pending,
            vouch,
            writers,
            specs,
            guards,
            guarded,
            admitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Runtime;

    /// With every list short, the written form is the in-memory types' own JSON: the
    /// mirrors drift from `Grant` and `Spec` in no name, order or omission.
    #[test]
    fn short_lists_are_written_as_the_types_write_themselves() {
        let net = |s: &str| -> Ipv4Network { s.parse().unwrap() };
        let g = Grant {
            name: "web".into(),
            iface: "br0".into(),
            proto: Proto::Udp,
            listen: Ipv4Addr::new(192, 0, 2, 1),
            port: 53,
            to: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 5353),
            allow: vec![net("192.0.2.0/25"), net("198.51.100.7/32")],
            network: Some(NetworkSelector {
                runtime: Runtime::Docker,
                name: "apps".into(),
            }),
        };
        let bare = Grant {
            network: None,
            allow: vec![],
            ..g.clone()
        };
        let mut full = Spec::of_grant(&g, Source::Policy);
        full.network = g.network.clone();
        full.host_gateway = true;
        full.origin = Some("/etc/loopgate/a.yaml".into());
        let mut sparse = Spec::of_grant(&bare, Source::Cli);
        sparse.name = None;
        sparse.listen = None;
        for state in [
            State {
                version: STATE_VERSION,
                grants: vec![g.clone(), bare.clone()],
                originals: vec![Original {
                    iface: "br0".into(),
                    ifindex: 5,
                    value: 1,
                }],
                pending: Some(vec![bare.clone()]),
                vouch: Some(Vouch {
                    generation: 9,
                    elements: 3,
                    plan: Some(4),
                }),
                writers: vec![1, 2],
                specs: vec![full, sparse],
                guards: vec![GuardSpec {
                    source: Source::Cli,
                    interface: "veth*".into(),
                }],
                guarded: vec!["veth1".into()],
                admitted: vec!["br0".into()],
            },
            State {
                version: STATE_VERSION,
                ..Default::default()
            },
        ] {
            let out = StateOut::new(&state, |_| -> Result<ListId, ()> {
                panic!("no list is long")
            })
            .unwrap();
            assert_eq!(
                serde_json::to_string(&out).unwrap(),
                serde_json::to_string(&state).unwrap()
            );
            let back: StateIn =
                serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
            assert!(back.refs().is_empty());
            let read = back
                .into_state(|_| -> Result<_, ()> { unreachable!() })
                .unwrap();
            assert_eq!(read, state);
        }
    }
}
