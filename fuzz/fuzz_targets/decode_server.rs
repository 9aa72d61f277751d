//! The decoder as a server runs it: masked frames from a client, in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::Role;

fuzz_target!(|data: &[u8]| switchboard_fuzz::decode(data, Role::Server));
