//! Rendering a plan as text for people: what `plan`, `--dry-run` and the golden file
//! show.
//!
//! The nft syntax itself belongs to the value ([`Ruleset::to_nft`]); this adds the one
//! case the value cannot express, a plan with no table at all.

use crate::ruleset::{Ruleset, TABLE};

/// The nft text of the planned table (loadable with `nft -f`), or a comment line saying
/// the table is absent when there are no grants (`ruleset` returned `None`).
pub fn render(ruleset: Option<&Ruleset>) -> String {
    match ruleset {
        Some(r) => r.to_nft(),
        None => format!("# no grants: table ip {TABLE} is absent\n"),
    }
}
