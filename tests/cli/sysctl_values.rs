//! Topic: route_localnet read as the kernel's signed integer, originals tied to the device instance, watch through the one engine.

use super::*;
