//! SIP message parsing (actors/src/sip/message.rs): a UDP datagram and a stream frame, then
//! everything the endpoint reads off a parsed message, printing, and the answer to a broken
//! stream. Any panic is a finding, including one inside ezk-sip-types that `parse` contains
//! with `catch_unwind` (libFuzzer's panic hook aborts before the unwind reaches it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_actors::sip::message::{self, Frame, Message, ParseError};
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let source: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    for parsed in [message::parse_datagram(data), message::parse_stream_frame(data)] {
        match parsed {
            Ok(Message::Request(mut request)) => {
                let _ = (request.top_via(), request.branch(), request.cseq(), request.call_id());
                let _ = (request.from(), request.to(), request.contacts());
                let to_tag = request.response(200, Some("t1"));
                let _ = to_tag.udp_destination(source);
                request.stamp_via_source(source);
                let _ = request.response(180, Some("t2")).to_bytes();
                // What pbx prints it must read back as the same request (a request it forwards
                // or answers); pbx's own Via stamp included.
                let printed = request.to_bytes();
                match message::parse_datagram(&printed) {
                    Ok(Message::Request(again)) => {
                        assert_eq!(again.method, request.method);
                        assert_eq!(again.call_id(), request.call_id());
                        assert_eq!(again.to_bytes(), printed, "printing is not stable");
                    }
                    other => panic!("pbx cannot read the request it printed: {other:?}\n{printed:?}"),
                }
            }
            Ok(Message::Response(response)) => {
                let _ = (response.cseq(), response.branch(), response.udp_destination(source));
                let printed = response.to_bytes();
                match message::parse_datagram(&printed) {
                    Ok(Message::Response(again)) => assert_eq!(again.to_bytes(), printed, "printing is not stable"),
                    other => panic!("pbx cannot read the response it printed: {other:?}\n{printed:?}"),
                }
            }
            Err(ParseError::Reject { code, reason, head }) => {
                if let Some(answer) = head.response(code, &reason) {
                    let _ = answer.to_bytes();
                }
            }
            Err(ParseError::Discard(_)) => {}
        }
    }
    // A TCP connection's buffer: frame off everything it holds, as the transport does.
    let mut rest = data;
    while !rest.is_empty() {
        match message::frame_stream(rest) {
            Frame::Incomplete => break,
            Frame::KeepAlive { len } | Frame::Message { len } => {
                assert!(len > 0 && len <= rest.len(), "frame of {len} bytes in a buffer of {}", rest.len());
                rest = &rest[len..];
            }
            Frame::Broken { code, reason, len } => {
                assert!(len <= rest.len());
                if code != 0 {
                    let _ = message::broken_stream_response(&rest[..len], code, &reason);
                }
                break;
            }
        }
    }
});
