//! quicfeed (work in progress)
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
pub mod protocol;
