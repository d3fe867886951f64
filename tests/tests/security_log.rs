//! The security log under a flood, end to end (issue 14): wrong passwords from thirty
//! addresses of one /24 end up as a handful of aggregated entries with counts, as the admin
//! API shows them (`GET /api/v1/security-log`), not one row per attempt.
//!
//! The addresses are 127.0.0.2–127.0.0.31 (all of 127.0.0.0/8 is local on Linux), so to pbx
//! they are thirty sources of the network 127.0.0.0/24.

use pbx_tests::*;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Sources of the flood.
const SOURCES: u8 = 30;
/// Wrong answers per source: the registrar blocks a source at its fifth failure
/// (`auth_failures_max`, set here), so each source gives five `auth_failed` events and one
/// `blocked`.
const ATTEMPTS: u32 = 5;
/// Longest the writer may take to store what it was given (it flushes every second).
const STORED_TIMEOUT: Duration = Duration::from_secs(15);

fn entries(pbx: &Pbx) -> Vec<Value> {
    let (code, body) = pbx.api("GET", "/api/v1/security-log?limit=1000", None);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("security-log JSON");
    v["entries"].as_array().expect("entries").clone()
}

fn of_kind<'a>(entries: &'a [Value], event: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["event"] == event).collect()
}

fn total(entries: &[&Value]) -> u64 {
    entries.iter().map(|e| e["count"].as_u64().expect("count")).sum()
}

/// 150 wrong digest answers (five from each of thirty addresses of 127.0.0.0/24, each for its
/// own unknown user) and the thirty blocks they cause are stored as at most two entries per
/// kind (one per minute; two if the flood straddles a minute), whose counts add up to every
/// event; at least one names the /24 (`source_bits` 24) rather than an address. One row per
/// attempt would be 180.
#[test]
fn a_flood_of_bad_registers_is_a_few_counted_entries() {
    let pbx = Pbx::start(PbxOptions::default().registrar(&format!("auth_failures_max = {ATTEMPTS}")));
    for n in 0..SOURCES {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n));
        let mut phone = SipClient::udp_from(source, pbx.sip);
        let user = format!("9{:03}", 2 + n);
        let contact = format!("Contact: <sip:{user}@{}>", phone.local());
        for attempt in 0..ATTEMPTS {
            let answer = phone.register(&user, "wrong", "MD5", &[&contact]);
            let code = answer.as_deref().and_then(status_code);
            assert!(matches!(code, Some(401 | 403)), "{source} attempt {attempt}: {answer:?}");
        }
    }
    let expected = u64::from(SOURCES) * u64::from(ATTEMPTS);
    let stored = wait_until(STORED_TIMEOUT, || total(&of_kind(&entries(&pbx), "auth_failed")) == expected);
    assert!(stored, "auth_failed counts do not add up to {expected}: {:#?}", entries(&pbx));
    let blocks_stored = wait_until(STORED_TIMEOUT, || total(&of_kind(&entries(&pbx), "blocked")) == u64::from(SOURCES));
    assert!(blocks_stored, "blocked counts do not add up to {SOURCES}: {:#?}", entries(&pbx));

    let all = entries(&pbx);
    for kind in ["auth_failed", "blocked"] {
        let rows = of_kind(&all, kind);
        assert!((1..=2).contains(&rows.len()), "{kind}: {} entries: {rows:#?}", rows.len());
        for row in &rows {
            let source: Ipv4Addr = row["source"].as_str().expect("source").parse().expect("an IPv4 source");
            assert_eq!(source.octets()[..3], [127, 0, 0], "{row}");
        }
        assert!(
            rows.iter().any(|r| r["source"] == "127.0.0.0" && r["source_bits"] == 24 && r["count"].as_u64() > Some(1)),
            "{kind}: no entry for 127.0.0.0/24 with a count: {rows:#?}"
        );
    }
    assert!(all.len() <= 4, "nothing else was logged: {all:#?}");
}
