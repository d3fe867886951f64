//! Conference rooms end to end: SIPp participants (each replaying its own tone, some with RFC
//! 4733 key presses) dial a room of the real `pbx` binary; pbx answers, mixes, and each
//! participant's test socket records what pbx sent it. The tests analyse that audio by
//! frequency: every participant hears the others' tones and never its own.
//!
//! SIPp replays pcaps through a raw socket: these tests need root or CAP_NET_RAW on sipp.

use pbx_tests::audio::{G711, G711_RATE_HZ, goertzel_power, tone};
use pbx_tests::rtp::{RtpSink, g711_audio, g711_stream_with_keys_pcap};
use pbx_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tones of the participants: apart from each other and from every prompt's tones
/// (`actors/src/conference/tones.rs`: 300–1000 Hz).
const TONES: [f64; 3] = [1250.0, 1650.0, 2150.0];
/// Longest pbx may take to close a room and free its ports.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

fn extensions() -> Vec<Ext> {
    ["100", "101", "102", "103"].iter().map(|n| ext(n, &format!("secret-{n}"))).collect()
}

/// A node with extensions 100–103, its own RTP ports and these `[[conferences]]`.
fn node(rooms: &str) -> Pbx {
    let options = PbxOptions { extensions: extensions(), ..PbxOptions::default() };
    Pbx::start(options.own_rtp_ports(200).toml(rooms))
}

/// `samples` with these key presses, as a pcap in the node's scratch dir.
fn pcap(pbx: &Pbx, name: &str, samples: &[i16], keys: &[(u64, char)]) -> PathBuf {
    let path = pbx.scratch().join(name);
    g711_stream_with_keys_pcap(&path, G711::Pcmu, samples, keys).expect("write pcap");
    path
}

/// A SIPp participant: extension `from` dials `room` and plays `pcap`; its RTP arrives at `sink`.
fn participant(pbx: &Pbx, scenario: &str, from: &str, room: &str, sink: &RtpSink, pcap: &Path) -> Sipp {
    Sipp::new(scenario, pbx.sip, &pbx.scratch())
        .caller(from, &format!("secret-{from}"), room)
        .media(G711::Pcmu, sink, Some(pcap))
        .args(&["-m", "1"])
}

/// Power of `hz` in `samples`, normalised by length: a tone of amplitude A gives (A/2)².
fn power(samples: &[i16], hz: f64) -> f64 {
    goertzel_power(samples, G711_RATE_HZ, hz) / (samples.len() as f64).powi(2)
}

fn rooms(pbx: &Pbx) -> Value {
    let (code, body) = pbx.api("GET", "/api/v1/conferences", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn room(pbx: &Pbx, number: &str) -> Value {
    let (code, body) = pbx.api("GET", &format!("/api/v1/conferences/{number}"), None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until the room has `n` participants in it (past any PIN prompt); the room's view.
fn wait_joined(pbx: &Pbx, number: &str, n: usize) -> Value {
    let joined =
        |v: &Value| v["participants"].as_array().map_or(0, |p| p.iter().filter(|p| !p["joined"].is_null()).count());
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(10), || {
        last = room(pbx, number);
        joined(&last) == n
    });
    assert!(ok, "room {number} never had {n} participants: {last}");
    last
}

/// Waits until no room is active and no RTP port is in use.
fn assert_nothing_left(pbx: &Pbx) {
    let idle = || rooms(pbx)["conferences"].as_array().is_some_and(|r| r.iter().all(|r| r["active"] == false));
    assert!(wait_until(CLEANUP_TIMEOUT, idle), "rooms left: {}", rooms(pbx));
    assert!(
        wait_until(CLEANUP_TIMEOUT, || pbx.metric("pbx_rtp_ports_in_use") == Some(0.0)
            && pbx.metric("pbx_conference_participants") == Some(0.0)
            && pbx.metric("pbx_conference_rooms_active") == Some(0.0)),
        "ports or participants left:\n{}",
        pbx.metrics()
    );
}

/// What a participant heard from `from` to `to` seconds of its stream (as pbx sent it).
fn heard(sink: RtpSink, from: f64, to: f64) -> Vec<i16> {
    let audio = g711_audio(&sink.finish());
    let rate = G711_RATE_HZ as f64;
    let (a, b) = ((from * rate) as usize, ((to * rate) as usize).min(audio.len()));
    assert!(b > a + G711_RATE_HZ as usize / 2, "only {} samples arrived", audio.len());
    audio[a..b].to_vec()
}

/// Three participants in one room, each playing its own tone: each hears the other two and
/// not itself; the room and its ports are gone when they leave.
#[test]
fn three_participants_hear_each_other_and_never_themselves() {
    let pbx = node("[[conferences]]\nnumber = \"800\"\nname = \"Standup\"");
    let sinks: Vec<RtpSink> = (0..3).map(|_| RtpSink::for_sipp()).collect();
    let runs: Vec<SippProcess> = TONES
        .iter()
        .enumerate()
        .map(|(i, &hz)| {
            let pcap = pcap(&pbx, &format!("p{i}.pcap"), &tone(hz, G711_RATE_HZ, 4.0, 6000.0), &[]);
            participant(&pbx, "conference_uac.xml", &format!("10{i}"), "800", &sinks[i], &pcap)
                .args(&["-d", "4500"])
                .spawn()
        })
        .collect();
    let view = wait_joined(&pbx, "800", 3);
    assert_eq!(view["name"], "Standup");
    let numbers: Vec<&str> =
        view["participants"].as_array().unwrap().iter().map(|p| p["number"].as_str().unwrap()).collect();
    for n in ["100", "101", "102"] {
        assert!(numbers.contains(&n), "{view}");
    }
    for run in runs {
        let run = run.wait();
        assert!(run.success, "{}", run.report());
        assert!(run.received_codes().contains(&407), "the INVITE is challenged like any call");
    }
    for (i, sink) in sinks.into_iter().enumerate() {
        let samples = heard(sink, 1.5, 3.5);
        let own = power(&samples, TONES[i]);
        for (j, &hz) in TONES.iter().enumerate().filter(|(j, _)| *j != i) {
            let other = power(&samples, hz);
            assert!(other > 1e5, "participant {i} hears {j}'s {hz} Hz weakly: {other:.0}");
            assert!(
                other > 1000.0 * own.max(1.0),
                "participant {i} hears its own tone: own {own:.0}, {j}'s {other:.0}"
            );
        }
    }
    assert_nothing_left(&pbx);
}
