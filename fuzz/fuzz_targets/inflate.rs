//! permessage-deflate: hostile compressed messages, and messages a `Deflater` compressed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| switchboard_fuzz::inflate(data));
