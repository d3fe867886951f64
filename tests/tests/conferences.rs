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

/// Extension `from` dials `room` and is refused: the final status must be `code`; the SIP
/// messages SIPp saw, to read the reason phrase in.
fn refused(pbx: &Pbx, from: &str, room: &str, code: u16) -> String {
    let sink = RtpSink::for_sipp();
    let run = Sipp::new("call_uac_fail.xml", pbx.sip, &pbx.scratch())
        .caller(from, &format!("secret-{from}"), room)
        .media(G711::Pcmu, &sink, None)
        .args(&["-m", "1"])
        .run();
    assert!(run.success, "{}", run.report());
    assert_eq!(run.received_codes().last(), Some(&code), "{}", run.messages);
    run.messages
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

/// Everything a participant was sent, decoded, placed by RTP timestamp.
fn audio(sink: RtpSink) -> Vec<i16> {
    g711_audio(&sink.finish())
}

/// `audio` from `from` to `to` seconds (at least half a second of it must be there).
fn window(audio: &[i16], from: f64, to: f64) -> &[i16] {
    let rate = f64::from(G711_RATE_HZ);
    let (a, b) = ((from * rate) as usize, ((to * rate) as usize).min(audio.len()));
    assert!(b > a + G711_RATE_HZ as usize / 2, "only {} samples arrived", audio.len());
    &audio[a..b]
}

/// Key presses `keys`, 250 ms apart from `start_ms`.
fn keys(start_ms: u64, keys: &str) -> Vec<(u64, char)> {
    keys.chars().enumerate().map(|(i, key)| (start_ms + 250 * i as u64, key)).collect()
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
        let audio = audio(sink);
        let samples = window(&audio, 1.5, 3.5);
        let own = power(samples, TONES[i]);
        for (j, &hz) in TONES.iter().enumerate().filter(|(j, _)| *j != i) {
            let other = power(samples, hz);
            assert!(other > 1e5, "participant {i} hears {j}'s {hz} Hz weakly: {other:.0}");
            assert!(
                other > 1000.0 * own.max(1.0),
                "participant {i} hears its own tone: own {own:.0}, {j}'s {other:.0}"
            );
        }
    }
    assert_nothing_left(&pbx);
}

/// The PIN by DTMF: the right one (then `#`) joins; three wrong ones get the caller hung up,
/// counted as an authentication failure, and it never joins (the others never hear it). The
/// PIN prompt is heard before.
#[test]
fn the_pin_admits_and_three_wrong_entries_hang_up() {
    let pbx = node("[[conferences]]\nnumber = \"801\"\npin = \"4321\"\nmax_participants = 5");
    let (good_sink, bad_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let good_pcap = pcap(&pbx, "good.pcap", &tone(TONES[0], G711_RATE_HZ, 4.0, 6000.0), &keys(600, "4321#"));
    let mut wrong = keys(1500, "1111#");
    wrong.extend(keys(2500, "22#"));
    wrong.extend(keys(3500, "4322#"));
    let bad_pcap = pcap(&pbx, "bad.pcap", &tone(TONES[1], G711_RATE_HZ, 5.0, 6000.0), &wrong);
    let good =
        participant(&pbx, "conference_uac.xml", "100", "801", &good_sink, &good_pcap).args(&["-d", "8000"]).spawn();
    wait_joined(&pbx, "801", 1);
    let bad = participant(&pbx, "conference_uac_hungup.xml", "101", "801", &bad_sink, &bad_pcap).spawn().wait();
    assert!(bad.success, "pbx hung up on the wrong PINs: {}", bad.report());
    assert_eq!(bad.received_requests("BYE").len(), 1);
    assert_eq!(pbx.metric("pbx_conference_pin_failures_total"), Some(1.0), "{}", pbx.metrics());
    let view = room(&pbx, "801");
    assert_eq!(view["participants"].as_array().map(Vec::len), Some(1), "{view}");
    let good = good.wait();
    assert!(good.success, "{}", good.report());
    // The one kept out heard the PIN prompt (880 Hz beeps) and nobody in the room.
    let kept_out = audio(bad_sink);
    let prompt = power(window(&kept_out, 0.0, 0.7), 880.0);
    assert!(prompt > 1e5, "no PIN prompt: {prompt:.0}");
    assert!(power(window(&kept_out, 0.5, 4.0), TONES[0]) < 100.0, "the room leaked to the PIN prompt");
    let inside = audio(good_sink);
    assert!(power(window(&inside, 2.0, 5.0), TONES[1]) < 100.0, "the room heard the caller at the PIN prompt");
    // The security log has the failure, under the caller's extension and source.
    let log = pbx.log();
    assert!(log.contains("conference PIN wrong three times"), "{log}");
    assert_nothing_left(&pbx);
}

/// The participant with this number in a room's view: its id.
fn id_of(view: &Value, number: &str) -> String {
    let participants = view["participants"].as_array().expect("participants");
    let p = participants.iter().find(|p| p["number"] == number).unwrap_or_else(|| panic!("{number} not in {view}"));
    p["id"].as_str().expect("an id").to_owned()
}

/// The API lists the room and its participants, mutes one (nobody hears it, it still hears
/// the room), kicks one (pbx sends it BYE), and locks the room (a new caller gets 403).
#[test]
fn the_api_lists_mutes_kicks_and_locks() {
    let pbx = node("[[conferences]]\nnumber = \"800\"\nname = \"Board\"");
    let sinks: Vec<RtpSink> = (0..3).map(|_| RtpSink::for_sipp()).collect();
    let runs: Vec<SippProcess> = TONES
        .iter()
        .enumerate()
        .map(|(i, &hz)| {
            let pcap = pcap(&pbx, &format!("p{i}.pcap"), &tone(hz, G711_RATE_HZ, 7.0, 6000.0), &[]);
            let (scenario, args): (&str, &[&str]) =
                if i == 2 { ("conference_uac_hungup.xml", &[]) } else { ("conference_uac.xml", &["-d", "7000"]) };
            participant(&pbx, scenario, &format!("10{i}"), "800", &sinks[i], &pcap).args(args).spawn()
        })
        .collect();
    let view = wait_joined(&pbx, "800", 3);
    assert_eq!((view["active"].as_bool(), view["locked"].as_bool()), (Some(true), Some(false)), "{view}");
    for p in view["participants"].as_array().unwrap() {
        assert_eq!((p["muted"].as_bool(), p["moderator"].as_bool()), (Some(false), Some(false)), "{p}");
        assert!(p["joined"].as_str().is_some_and(|t| t.ends_with('Z')), "{p}");
    }
    let listed = rooms(&pbx);
    assert_eq!(listed["conferences"][0]["number"], "800", "{listed}");
    let mut speaking = Value::Null;
    let spoke = wait_until(Duration::from_secs(5), || {
        speaking = room(&pbx, "800");
        speaking["active_speaker"].is_string() && speaking["participants"][0]["talking"].is_boolean()
    });
    assert!(spoke, "no active speaker among three talkers: {speaking}");
    let (muted, kicked) = (id_of(&view, "100"), id_of(&view, "102"));
    let post = |path: &str| pbx.api("POST", &format!("/api/v1/conferences/800{path}"), None).0;
    assert_eq!(post(&format!("/participants/{muted}/mute")), 204);
    assert_eq!(pbx.api("DELETE", &format!("/api/v1/conferences/800/participants/{kicked}"), None).0, 204);
    // Strangers' ids and rooms: 404.
    assert_eq!(post("/participants/999999/mute"), 404);
    assert_eq!(post("/participants/x/mute"), 404);
    assert_eq!(pbx.api("POST", "/api/v1/conferences/899/lock", None).0, 404);
    assert_eq!(pbx.api("GET", "/api/v1/conferences/899", None).0, 404);
    // Without the token: 401, nothing changes.
    let unmute = format!("/api/v1/conferences/800/participants/{muted}/unmute");
    let (code, _) = http_request(pbx.http, "POST", &unmute, None, Some("wrong")).expect("an answer");
    assert_eq!(code, 401);
    let view = room(&pbx, "800");
    let p = &view["participants"].as_array().unwrap().iter().find(|p| p["id"] == muted.as_str()).unwrap().clone();
    assert_eq!(p["muted"], true, "{view}");
    assert_eq!(p["talking"], false, "a muted participant is not mixed: {view}");
    // Locked: a new caller is refused, saying why.
    assert_eq!(post("/lock"), 204);
    assert_eq!(room(&pbx, "800")["locked"], true);
    let messages = refused(&pbx, "103", "800", 403);
    assert!(messages.contains("403 Conference locked"), "{messages}");
    assert_eq!(post("/unlock"), 204);

    let mut runs = runs.into_iter();
    let (first, second, third) = (runs.next().unwrap(), runs.next().unwrap(), runs.next().unwrap());
    let third = third.wait();
    assert!(third.success, "the kicked one got pbx's BYE: {}", third.report());
    for run in [first.wait(), second.wait()] {
        assert!(run.success, "{}", run.report());
    }
    let mut sinks = sinks.into_iter();
    let (muted_heard, other_heard) = (audio(sinks.next().unwrap()), audio(sinks.next().unwrap()));
    let late = window(&other_heard, 4.5, 6.5);
    assert!(power(late, TONES[0]) < 100.0, "the muted one is heard: {:.0}", power(late, TONES[0]));
    assert!(power(late, TONES[2]) < 100.0, "the kicked one is heard: {:.0}", power(late, TONES[2]));
    let muted_late = window(&muted_heard, 4.5, 6.5);
    assert!(power(muted_late, TONES[1]) > 1e5, "the muted one still hears the room");
    assert_nothing_left(&pbx);
}

/// A participant that stops sending is concealed, then silent, and the others go on; at the
/// RTP timeout its call ends like any call's. One that hangs up early leaves the others be.
#[test]
fn a_silent_participant_and_an_early_leaver_leave_the_others_unaffected() {
    let options = PbxOptions { extensions: extensions(), ..PbxOptions::default() };
    let pbx =
        Pbx::start(options.own_rtp_ports(200).calls("rtp_timeout_s = 5").toml("[[conferences]]\nnumber = \"800\""));
    let sinks: Vec<RtpSink> = (0..3).map(|_| RtpSink::for_sipp()).collect();
    // 100 sends one second of its tone and then nothing; 102 hangs up after 3 s.
    let seconds = [1.0, 9.0, 9.0];
    let runs: Vec<SippProcess> = (0..3)
        .map(|i| {
            let pcap = pcap(&pbx, &format!("p{i}.pcap"), &tone(TONES[i], G711_RATE_HZ, seconds[i], 6000.0), &[]);
            let number = format!("10{i}");
            match i {
                0 => participant(&pbx, "conference_uac_hungup.xml", &number, "800", &sinks[i], &pcap),
                1 => participant(&pbx, "conference_uac.xml", &number, "800", &sinks[i], &pcap).args(&["-d", "9000"]),
                _ => participant(&pbx, "conference_uac.xml", &number, "800", &sinks[i], &pcap).args(&["-d", "3000"]),
            }
            .spawn()
        })
        .collect();
    wait_joined(&pbx, "800", 3);
    // After the early leaver went: two, the silent one concealed.
    let view = wait_joined(&pbx, "800", 2);
    let silent = view["participants"].as_array().unwrap().iter().find(|p| p["number"] == "100").cloned();
    let silent = silent.unwrap_or_else(|| panic!("{view}"));
    assert!(silent["concealed_frames"].as_u64() > Some(0), "{silent}");
    for run in runs {
        let run = run.wait();
        assert!(run.success, "{}", run.report());
    }
    let mut sinks = sinks.into_iter();
    let (silent_heard, steady_heard) = (audio(sinks.next().unwrap()), audio(sinks.next().unwrap()));
    assert!(power(window(&steady_heard, 0.3, 0.9), TONES[0]) > 1e5, "heard while it sent");
    let later = window(&steady_heard, 4.0, 6.0);
    assert!(power(later, TONES[0]) < 100.0, "silence after concealment: {:.0}", power(later, TONES[0]));
    assert!(power(later, TONES[2]) < 100.0, "the one who left is gone: {:.0}", power(later, TONES[2]));
    assert!(power(window(&silent_heard, 4.0, 5.5), TONES[1]) > 1e5, "the silent one still hears the room");
    // Its call ended at the RTP timeout, pbx hanging up; the CDR says so.
    let (_, cdrs) = pbx.api("GET", "/api/v1/cdrs?extension=100", None);
    assert!(cdrs.contains("\"hangup\":\"pbx\""), "{cdrs}");
    assert_nothing_left(&pbx);
}

/// Calls that do not get in: a room at its maximum (486), a number that is no room (404); the
/// caller is told at once and no port stays taken.
#[test]
fn a_full_room_is_busy_and_an_unknown_room_is_not_found() {
    let pbx = node("[[conferences]]\nnumber = \"802\"\nmax_participants = 1");
    let sink = RtpSink::for_sipp();
    let pcap = pcap(&pbx, "p.pcap", &tone(TONES[0], G711_RATE_HZ, 3.0, 6000.0), &[]);
    let inside = participant(&pbx, "conference_uac.xml", "100", "802", &sink, &pcap).args(&["-d", "4000"]).spawn();
    wait_joined(&pbx, "802", 1);
    for (room, code, reason) in [("802", 486, "486 Conference room full"), ("899", 404, "404 Not Found")] {
        let messages = refused(&pbx, "101", room, code);
        assert!(messages.contains(reason), "{messages}");
    }
    let inside = inside.wait();
    assert!(inside.success, "{}", inside.report());
    assert_nothing_left(&pbx);
}

/// The licence gates rooms: without the `conference` feature a room's caller gets 403 saying
/// so; with it, no more rooms at once than `conference_rooms` (the next gets 403 naming the
/// limit, while joining the room already in use is fine). Emergency numbers are not rooms and
/// never gated.
#[test]
fn the_licence_gates_conference_rooms() {
    use pbx_tests::licence_server::Server;
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let limits = |rooms: u32| json!({ "extensions": 10, "concurrent_calls": 8, "conference_rooms": rooms, "proxy_seats": 0, "cluster_nodes": 1 });
    let grant = json!({ "features": [], "limits": limits(0), "valid_days": 30 });
    assert_eq!(server.call("PUT", "/admin/v1/serials/PBX-CONF", grant, true).0, 200);
    let voucher = json!({ "features": ["conference"], "limits": limits(1) });
    assert_eq!(server.call("PUT", "/admin/v1/vouchers/V-CONF", voucher, true).0, 200);
    let options = PbxOptions { extensions: extensions(), ..PbxOptions::default() }
        .own_rtp_ports(200)
        .licence("serial = \"PBX-CONF\"")
        .licence(&format!("server_url = \"{}\"", server.url("")))
        .licence(&format!("public_key = \"{}\"", server.public_key().to_hex()))
        .licence(&format!("server_ca = {:?}", server.dir.join("tls-cert.pem")))
        .toml("[[conferences]]\nnumber = \"800\"\n\n[[conferences]]\nnumber = \"801\"");
    let pbx = Pbx::start(options);
    let licence = || serde_json::from_str::<Value>(&pbx.api("GET", "/api/v1/licence", None).1).unwrap();
    assert!(wait_until(Duration::from_secs(30), || licence()["status"] == "licensed"), "{}", licence());
    let messages = refused(&pbx, "100", "800", 403);
    assert!(messages.contains("403 Licence: conferences not licensed"), "{messages}");
    // The voucher unlocks conferences, one room at a time.
    assert_eq!(pbx.api("POST", "/api/v1/vouchers", Some(r#"{"code":"V-CONF"}"#)).0, 200);
    let unlocked = wait_until(Duration::from_secs(30), || {
        licence()["effective"]["features"].as_array().is_some_and(|f| f.contains(&json!("conference")))
    });
    assert!(unlocked, "{}", licence());
    let (sink, second_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let pcap = pcap(&pbx, "p.pcap", &tone(TONES[0], G711_RATE_HZ, 3.0, 6000.0), &[]);
    let inside = participant(&pbx, "conference_uac.xml", "100", "800", &sink, &pcap).args(&["-d", "5000"]).spawn();
    wait_joined(&pbx, "800", 1);
    let messages = refused(&pbx, "101", "801", 403);
    assert!(messages.contains("403 Licence limit: 1 conference rooms"), "{messages}");
    let second = participant(&pbx, "conference_uac.xml", "102", "800", &second_sink, &pcap).args(&["-d", "1500"]).run();
    assert!(second.success, "the room in use takes more callers: {}", second.report());
    let inside = inside.wait();
    assert!(inside.success, "{}", inside.report());
    assert_nothing_left(&pbx);
}

/// The participations of `number` in its subject export.
fn participations(pbx: &Pbx, number: &str) -> Vec<Value> {
    let (code, body) = pbx.api("GET", &format!("/api/v1/privacy/subjects/{number}/export"), None);
    assert_eq!(code, 200, "{body}");
    let export: Value = serde_json::from_str(&body).expect("JSON");
    export["conference_participations"].as_array().cloned().unwrap_or_default()
}

/// A participation ends → its record is stored (room, number, times; no audio) and exported
/// with the number's data; kill -9 with the room still up loses none that ended.
#[test]
fn participations_are_recorded_and_survive_kill_9() {
    let mut pbx = node("[[conferences]]\nnumber = \"800\"");
    let (left_sink, staying_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    let pcap = pcap(&pbx, "p.pcap", &tone(TONES[0], G711_RATE_HZ, 2.0, 6000.0), &[]);
    let staying = participant(&pbx, "conference_uac_hungup.xml", "101", "800", &staying_sink, &pcap).spawn();
    wait_joined(&pbx, "800", 1);
    let left = participant(&pbx, "conference_uac.xml", "100", "800", &left_sink, &pcap).args(&["-d", "1500"]).run();
    assert!(left.success, "{}", left.report());
    let mut recorded = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        recorded = participations(&pbx, "100");
        !recorded.is_empty()
    }));
    let record = &recorded[0];
    assert_eq!(record["room"], "800", "{record}");
    assert_eq!(record["number"], "100", "{record}");
    for key in ["arrived", "joined", "left"] {
        assert!(record[key].as_str().is_some_and(|t| t.ends_with('Z')), "{key}: {record}");
    }
    assert!(record.get("audio").is_none(), "{record}");
    // The room is still up with 101 in it: the crash.
    assert_eq!(room(&pbx, "800")["active"], true);
    pbx.kill9();
    pbx.start_again();
    assert_eq!(participations(&pbx, "100"), recorded, "the ended participation survived kill -9");
    let _ = staying.stop();
    assert_eq!(room(&pbx, "800")["active"], false, "rooms are memory: none after a restart");
}

/// A stranger who finds the room's ports (it sweeps the node's whole RTP range) and floods
/// them with a loud tone and with garbage is not heard: each port takes only its
/// participant's source. The drops are counted and the room goes on.
#[test]
fn a_stranger_sweeping_the_rtp_ports_is_not_heard() {
    use pbx_tests::rtp::rtp_packet;
    let pbx = node("[[conferences]]\nnumber = \"800\"");
    let sinks: Vec<RtpSink> = (0..2).map(|_| RtpSink::for_sipp()).collect();
    let runs: Vec<SippProcess> = (0..2)
        .map(|i| {
            let pcap = pcap(&pbx, &format!("p{i}.pcap"), &tone(TONES[i], G711_RATE_HZ, 5.0, 6000.0), &[]);
            participant(&pbx, "conference_uac.xml", &format!("10{i}"), "800", &sinks[i], &pcap)
                .args(&["-d", "5500"])
                .spawn()
        })
        .collect();
    wait_joined(&pbx, "800", 2);
    std::thread::sleep(Duration::from_millis(500));
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let loud = G711::Pcmu.encode(&tone(3000.0, G711_RATE_HZ, 0.02, 12000.0));
    let ports = pbx.rtp_ports.clone().expect("own ports");
    let mut sent = 0u64;
    for round in 0..40u16 {
        for port in ports.clone() {
            let packet = rtp_packet(0, round, u32::from(round) * 160, 0xBAD, false, &loud);
            let _ = stranger.send_to(&packet, ("127.0.0.1", port));
            let _ = stranger.send_to(b"\xff\x00garbage", ("127.0.0.1", port));
            sent += 2;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for run in runs {
        let run = run.wait();
        assert!(run.success, "{}", run.report());
    }
    for (i, sink) in sinks.into_iter().enumerate() {
        let heard = audio(sink);
        let stranger_tone = power(window(&heard, 1.0, 4.5), 3000.0);
        assert!(stranger_tone < 100.0, "participant {i} hears the stranger: {stranger_tone:.0}");
        assert!(power(window(&heard, 1.0, 4.5), TONES[1 - i]) > 1e5, "participant {i} still hears the other");
    }
    let foreign = pbx.metric("pbx_conference_foreign_packets_total").unwrap_or(0.0);
    assert!(foreign > 0.0 && foreign <= sent as f64, "foreign packets counted: {foreign} of {sent}");
    assert_nothing_left(&pbx);
}

/// A moderator (the moderator PIN) locks the room with `*5` and mutes the others with `*7`;
/// a participant pressing `*5` changes nothing. The API shows each step.
#[test]
fn a_moderator_locks_with_star_5_and_mutes_all_with_star_7() {
    let pbx = node("[[conferences]]\nnumber = \"803\"\npin = \"1111\"\nmoderator_pin = \"2222\"");
    let (moderator_sink, participant_sink) = (RtpSink::for_sipp(), RtpSink::for_sipp());
    // The participant joins first and presses *5 (not allowed); the moderator joins, then
    // presses *5 (lock) and *7 (mute all).
    let mut participant_keys = keys(500, "1111#");
    participant_keys.extend(keys(2500, "*5"));
    let mut moderator_keys = keys(500, "2222#");
    moderator_keys.extend(keys(2500, "*5"));
    moderator_keys.extend(keys(3500, "*7"));
    let participant_pcap = pcap(&pbx, "p.pcap", &tone(TONES[0], G711_RATE_HZ, 11.0, 6000.0), &participant_keys);
    let moderator_pcap = pcap(&pbx, "m.pcap", &tone(TONES[1], G711_RATE_HZ, 6.0, 6000.0), &moderator_keys);
    let member = participant(&pbx, "conference_uac.xml", "100", "803", &participant_sink, &participant_pcap)
        .args(&["-d", "12000"])
        .spawn();
    wait_joined(&pbx, "803", 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(room(&pbx, "803")["locked"], false, "a participant's *5 locks nothing");
    let moderator = participant(&pbx, "conference_uac.xml", "101", "803", &moderator_sink, &moderator_pcap)
        .args(&["-d", "6000"])
        .spawn();
    let mut view = Value::Null;
    let locked_and_muted = wait_until(Duration::from_secs(10), || {
        view = room(&pbx, "803");
        let muted = view["participants"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| p["number"] == "100" && p["muted"] == true)
                && ps.iter().any(|p| p["number"] == "101" && p["moderator"] == true && p["muted"] == false)
        });
        view["locked"] == true && muted
    });
    assert!(locked_and_muted, "{view}");
    for run in [member.wait(), moderator.wait()] {
        assert!(run.success, "{}", run.report());
    }
    // After *7 the moderator no longer hears the participant.
    let heard = audio(moderator_sink);
    let late = window(&heard, 4.5, 5.5);
    assert!(power(late, TONES[0]) < 100.0, "muted by *7 but heard: {:.0}", power(late, TONES[0]));
    drop(participant_sink);
    assert_nothing_left(&pbx);
}

/// The conferences actor fails (the test hook's panic): every caller in its rooms gets a BYE
/// (nobody is left in a room nobody runs), the supervisor restarts it, and the room works again.
#[test]
fn a_failed_conferences_actor_hangs_up_its_callers_and_comes_back() {
    let options = PbxOptions { extensions: extensions(), ..PbxOptions::default() };
    let pbx = Pbx::start(options.own_rtp_ports(200).test_hooks().toml("[[conferences]]\nnumber = \"800\""));
    let sink = RtpSink::for_sipp();
    let pcap = pcap(&pbx, "p.pcap", &tone(TONES[0], G711_RATE_HZ, 3.0, 6000.0), &[]);
    let inside = participant(&pbx, "conference_uac_hungup.xml", "100", "800", &sink, &pcap).spawn();
    wait_joined(&pbx, "800", 1);
    let (code, body) = pbx.api("POST", "/api/v1/debug/panic/conferences", None);
    assert_eq!(code, 202, "{body}");
    let inside = inside.wait();
    assert!(inside.success, "hung up when its room went: {}", inside.report());
    let restarted = || pbx.metric("pbx_actor_restarts_total{actor=\"conferences\"}") == Some(1.0);
    assert!(wait_until(Duration::from_secs(10), restarted), "{}", pbx.metrics());
    assert!(wait_until(Duration::from_secs(10), || pbx.readyz().0 == 200), "{:?}", pbx.readyz());
    let again_sink = RtpSink::for_sipp();
    let again = participant(&pbx, "conference_uac.xml", "101", "800", &again_sink, &pcap).args(&["-d", "2000"]).spawn();
    wait_joined(&pbx, "800", 1);
    let again = again.wait();
    assert!(again.success, "{}", again.report());
    assert_nothing_left(&pbx);
}
