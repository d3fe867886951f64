//! Intercom end to end (issue 18, item 9): `*80` + an extension calls its phones asking them to
//! answer by themselves. The callee is a SIPp phone whose scenario fails unless the INVITE
//! carries `Call-Info: …;answer-after=0` and `Alert-Info: …;info=alert-autoanswer`, and which
//! answers at once without ringing; the caller hears it through pbx. The 120 s cap is checked
//! on virtual time in `actors/src/call/tests.rs` (a real wait would be two minutes).

use pbx_tests::audio::{G711, G711_RATE_HZ, dominant_frequency, tone};
use pbx_tests::rtp::{RtpSink, g711_audio, g711_stream_pcap};
use pbx_tests::*;

const CALLEE_HZ: f64 = 600.0;

#[test]
fn star_80_calls_an_extension_that_answers_by_itself() {
    let pbx = Pbx::start(PbxOptions::default().own_rtp_ports(100));
    let (caller_sink, callee_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let callee_pcap = pbx.scratch().join("callee.pcap");
    g711_stream_pcap(&callee_pcap, G711::Pcmu, &tone(CALLEE_HZ, G711_RATE_HZ, 1.0, 8000.0)).expect("pcap");
    let caller_pcap = pbx.scratch().join("caller.pcap");
    g711_stream_pcap(&caller_pcap, G711::Pcmu, &tone(1000.0, G711_RATE_HZ, 1.0, 8000.0)).expect("pcap");
    let callee = Sipp::registered_callee(&pbx, "intercom_uas.xml", "101", "secret-101", 1)
        .media(G711::Pcmu, &callee_sink, Some(&callee_pcap))
        .spawn();
    pbx.wait_registered("101", &callee);
    let caller = Sipp::new("call_uac.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "*80101")
        .media(G711::Pcmu, &caller_sink, Some(&caller_pcap))
        .args(&["-d", "1500", "-m", "1"])
        .run();
    let callee = callee.finish_after(&caller);
    assert!(caller.success, "caller: {}", caller.report());
    assert!(callee.success, "callee (the INVITE asked for auto-answer?): {}", callee.report());
    assert!(!caller.received_codes().contains(&180), "an intercom does not ring: {:?}", caller.received_codes());
    let ports = pbx.rtp_ports.clone().expect("own ports");
    let heard: Vec<_> = caller_sink.finish().into_iter().filter(|d| ports.contains(&d.from.port())).collect();
    assert!(heard.len() >= 25, "{} RTP packets from pbx reached the caller", heard.len());
    assert_eq!(dominant_frequency(&g711_audio(&heard), G711_RATE_HZ), CALLEE_HZ);
    let (code, body) = pbx.api("GET", "/api/v1/cdrs", None);
    assert_eq!(code, 200);
    let cdrs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let cdr = &cdrs["cdrs"][0];
    assert_eq!((cdr["callee"].as_str(), cdr["disposition"].as_str()), (Some("101"), Some("answered")), "{cdr}");
}
