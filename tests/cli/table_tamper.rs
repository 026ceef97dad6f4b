//! Topic: a dormant, edited or re-flagged table of loopgate's, and netlink reads that straddle other commits.

use super::*;
