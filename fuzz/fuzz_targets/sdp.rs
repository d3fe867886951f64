//! SDP (actors/src/sdp): a body from the network, then what pbx does with one — read its
//! audio, print it, answer it, plan the other leg's offer. Beyond "no panic", two properties
//! the module promises: what `parse` read prints back to a description that parses the same
//! ("printing loses nothing"), and every description pbx writes is one it can read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_actors::sdp::{self, Codec, Direction, LocalSession};

fuzz_target!(|data: &[u8]| {
    let Ok(description) = sdp::parse(data) else { return };
    let _ = (description.origin(), description.media_count());
    let printed = description.to_bytes();
    match sdp::parse(&printed) {
        Ok(again) => assert_eq!(again, description, "printing changed the description:\n{printed:?}"),
        Err(e) => panic!("pbx cannot read what it printed ({e}):\n{printed:?}"),
    }
    let audio = description.audio();
    let mut session = LocalSession::new(7, "192.0.2.1".parse().unwrap());
    for codec in [Codec::Pcmu, Codec::Pcma] {
        if let Ok(answer) = sdp::answer(&mut session, &description, 20_000, codec, true, Direction::SendRecv) {
            let read = sdp::parse(&answer).unwrap_or_else(|e| panic!("own answer unreadable ({e}): {answer:?}"));
            assert!(read.audio().is_some(), "own answer has no usable audio: {answer:?}");
        }
    }
    if let Some(audio) = &audio {
        let _ = sdp::choose(audio, Codec::Pcma);
        let direction = audio.direction.answer();
        if let Ok((codecs, event)) = sdp::plan_offer(Some(audio)) {
            let offer = sdp::offer(&mut session, 20_002, &codecs, event, direction);
            sdp::parse(&offer).unwrap_or_else(|e| panic!("own offer unreadable ({e}): {offer:?}"));
        }
    }
});
