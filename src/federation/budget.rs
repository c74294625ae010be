//! The oracle budget: a token bucket per peer and kind (`oracle`, `resync`), kept in the
//! store.
//!
//! Every publish a peer sends is a blind operation, and a blind operation is the only
//! way to test a guessed BSN (invariant 2): so each one takes a token, a request that needs
//! more tokens than the bucket holds is refused whole, and the bucket refills at a fixed
//! rate up to its capacity. A bucket (not a fixed window) has no edge where two windows'
//! allowances meet, and its state lives in the store (`meta` key `budget/<peer>/<kind>`,
//! written by the service in the same store write as the refusal's audit entry), so a
//! restart of this node gives a probing peer nothing back.
//!
//! The arithmetic is [`crate::domain::bucket`] (shared with the client API's registration
//! limit), re-exported here so the federation's users keep their paths.

pub use crate::domain::bucket::{Bucket, Limit, DAY_MS, HOUR_MS};
