//! The opening handshake: raw bytes as a request head and as a response head.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard_fuzz::handshake(data));
