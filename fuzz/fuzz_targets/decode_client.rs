//! The decoder as a client runs it: unmasked frames from a server, in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::Role;

fuzz_target!(|data: &[u8]| switchboard_fuzz::decode(data, Role::Client));
