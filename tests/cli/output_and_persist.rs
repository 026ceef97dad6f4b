//! Topic: exit codes and output that stay true after a change; the persisted policy file.

use super::*;
