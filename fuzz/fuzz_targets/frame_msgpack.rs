//! WebSocket binary frames: MessagePack decoding (depth limit, one value per frame), every
//! frame type, and the checks of a call before dispatch.
#![no_main]

use flowhub::protocol::frame::decode;
use flowhub::protocol::Encoding;
use libfuzzer_sys::fuzz_target;

const MAX_DEPTH: usize = 32;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode(data, Encoding::MsgPack, MAX_DEPTH) {
        flowhub_fuzz::frame(value, Encoding::MsgPack);
    }
});
