//! Directed pickup end to end (issue 18, item 4): while 100's call rings 101, 102 dials
//! `**101` and takes it. The picker is answered, 100 is answered and hears 102's tone through
//! pbx (this SIPp caller plays none), 101's ringing phone gets a CANCEL; when 102 hangs up pbx
//! sends 100 a BYE. With nothing ringing, `**101` gets 480.

use pbx_tests::audio::{G711, G711_RATE_HZ, dominant_frequency, tone};
use pbx_tests::rtp::{RtpSink, g711_audio, g711_stream_pcap};
use pbx_tests::*;
use std::time::Duration;

fn node() -> Pbx {
    let mut options = PbxOptions::default().own_rtp_ports(100);
    options.extensions.push(ext("102", "secret-102"));
    Pbx::start(options)
}

fn pcap(pbx: &Pbx, name: &str, hz: f64) -> std::path::PathBuf {
    let path = pbx.scratch().join(name);
    g711_stream_pcap(&path, G711::Pcmu, &tone(hz, G711_RATE_HZ, 1.0, 8000.0)).expect("pcap");
    path
}

/// The calls the API lists, with their state.
fn states(pbx: &Pbx) -> Vec<String> {
    let (_, body) = pbx.api("GET", "/api/v1/calls", None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["calls"].as_array().into_iter().flatten().filter_map(|c| c["state"].as_str().map(String::from)).collect()
}

#[test]
fn star_star_picks_up_the_call_ringing_an_extension() {
    let pbx = node();
    let ringing = Sipp::registered_callee(&pbx, "call_uas_ring.xml", "101", "secret-101", 1)
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .timeout(Duration::from_secs(20))
        .spawn();
    pbx.wait_registered("101", &ringing);
    let caller_sink = RtpSink::for_sipp();
    let caller = Sipp::new("call_uac_hungup.xml", pbx.sip, &pbx.scratch())
        .caller("100", "secret-100", "101")
        .media(G711::Pcmu, &caller_sink, None)
        .args(&["-m", "1"])
        .timeout(Duration::from_secs(20))
        .spawn();
    assert!(wait_until(Duration::from_secs(10), || states(&pbx) == ["ringing"]), "{:?}", states(&pbx));
    let picker = Sipp::new("call_uac.xml", pbx.sip, &pbx.scratch())
        .caller("102", "secret-102", "**101")
        .media(G711::Pcmu, &RtpSink::for_sipp(), Some(&pcap(&pbx, "picker.pcap", 600.0)))
        .args(&["-d", "1500", "-m", "1"])
        .timeout(Duration::from_secs(15))
        .run();
    let caller = caller.finish_after(&picker);
    let ringing = ringing.finish_after(&picker);
    assert!(picker.success, "picker: {}", picker.report());
    assert!(caller.success, "caller (answered, then hung up by pbx): {}", caller.report());
    assert!(ringing.success, "101: {}", ringing.report());
    assert_eq!(ringing.received_requests("CANCEL").len(), 1, "101 stops ringing: {}", ringing.messages);
    let ports = pbx.rtp_ports.clone().expect("own ports");
    let heard = |sink: RtpSink| {
        let from_pbx: Vec<_> = sink.finish().into_iter().filter(|d| ports.contains(&d.from.port())).collect();
        assert!(from_pbx.len() >= 25, "{} packets from pbx", from_pbx.len());
        dominant_frequency(&g711_audio(&from_pbx), G711_RATE_HZ)
    };
    assert_eq!(heard(caller_sink), 600.0, "the caller hears the picker");
    let (_, body) = pbx.api("GET", "/api/v1/cdrs", None);
    let cdrs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let list = cdrs["cdrs"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "one call, one record: {list:?}");
    assert_eq!((list[0]["callee"].as_str(), list[0]["disposition"].as_str()), (Some("101"), Some("answered")));
}

#[test]
fn nothing_ringing_nothing_to_pick_up() {
    let pbx = node();
    let picker = Sipp::new("call_uac_fail.xml", pbx.sip, &pbx.scratch())
        .caller("102", "secret-102", "**101")
        .media(G711::Pcmu, &RtpSink::for_sipp(), None)
        .args(&["-m", "1"])
        .run();
    assert!(picker.received_codes().contains(&480), "{:?}: {}", picker.received_codes(), picker.messages);
}
