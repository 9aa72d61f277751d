//! The channels protocol (Phoenix V2): a client's message as text and as binary.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard_fuzz::channels(data));
