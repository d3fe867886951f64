//! The call records and active calls API (`/api/v1/cdrs`, `/api/v1/calls`) end to end against
//! the real `pbx` binary on 127.0.0.1. Records from real calls are tested with the calls; here
//! they are written into the data directory while the node is stopped.

use pbx_actors::Timestamp;
use pbx_actors::cdr::{Cdr, Disposition, HangupSide, MediaCounters};
use pbx_tests::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn get(pbx: &Pbx, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = pbx.api("GET", path, None);
    (code, json(&body))
}

/// A call from `caller` to `callee` that ended `end_s` seconds after 2024-05-01T12:00:00Z;
/// call 2 was busy, the others answered.
fn cdr(id: u64, end_s: u64, caller: &str, callee: &str) -> Cdr {
    let base = 1_714_564_800;
    let busy = id == 2;
    Cdr {
        id,
        call_id: format!("call-{id}@127.0.0.1"),
        caller: caller.into(),
        callee: callee.into(),
        start: Timestamp::from_secs(base + end_s - 30),
        answer: (!busy).then(|| Timestamp::from_secs(base + end_s - 20)),
        end: Timestamp::from_secs(base + end_s),
        disposition: if busy { Disposition::Busy } else { Disposition::Answered },
        hangup: (!busy).then_some(HangupSide::Caller),
        codec_caller: Some("PCMA".into()),
        codec_callee: Some("PCMA".into()),
        media: [MediaCounters { packets_in: 500, ..MediaCounters::default() }, MediaCounters::default()],
        follows: None,
        transfer: None,
    }
}

/// A fresh node has no call records and no calls in progress.
#[test]
fn cdrs_and_calls_start_empty() {
    let pbx = Pbx::start(PbxOptions::default());
    let empty = serde_json::json!({ "cdrs": [], "next": null });
    for path in [
        "/api/v1/cdrs",
        "/api/v1/cdrs?from=2024-05-01T00:00:00Z&to=2030-01-01T00:00:00%2B01:00&extension=100&limit=500",
        "/api/v1/cdrs?from=0&limit=1",
    ] {
        assert_eq!(get(&pbx, path), (200, empty.clone()), "{path}");
    }
    assert_eq!(get(&pbx, "/api/v1/calls"), (200, serde_json::json!({ "calls": [] })));
}

/// A bad query parameter gets 400 with a JSON error naming it.
#[test]
fn bad_cdr_parameters_get_400_naming_them() {
    let pbx = Pbx::start(PbxOptions::default());
    for (query, parameter) in [
        ("from=last-week", "from"),
        ("to=2024-02-30T00:00:00Z", "to"),
        ("from=2000&to=1000", "to"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("extension=", "extension"),
        ("limit=5&limit=6", "limit"),
        ("page=2", "page"),
    ] {
        let (code, body) = get(&pbx, &format!("/api/v1/cdrs?{query}"));
        assert_eq!(code, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(parameter), "{query}: the error should name {parameter}: {body}");
    }
}

/// Both routes answer 401 without the token or with a wrong one.
#[test]
fn cdrs_and_calls_need_the_token() {
    let pbx = Pbx::start(PbxOptions::default());
    let wrong = "0".repeat(pbx.token.len());
    for path in ["/api/v1/cdrs", "/api/v1/cdrs?limit=1", "/api/v1/calls"] {
        for token in [None, Some(wrong.as_str()), Some("")] {
            let (code, answer) = http_request(pbx.http, "GET", path, None, token).expect("an HTTP answer");
            assert_eq!(code, 401, "GET {path} with token {token:?}: {answer}");
            assert!(!answer.contains("call-"), "records leaked without a token: {answer}");
        }
    }
}

/// Stored records come back newest first, a page at a time through `next`, filtered by time
/// window and extension, in the documented JSON shape.
#[test]
fn stored_cdrs_are_paged_newest_first_and_filtered() {
    // The records are from 2024: keep them (the longest retention) so the reaper leaves them.
    let mut pbx = Pbx::start(PbxOptions::default().calls("cdr_retention_days = 3650"));
    assert_eq!(pbx.stop(), Some(0), "{}", pbx.log());
    {
        let storage = pbx_node::storage::Storage::open(&pbx.data_dir()).expect("open the node's storage");
        let records: Vec<Cdr> =
            (1..=5).map(|id| cdr(id, id * 60, if id % 2 == 0 { "101" } else { "100" }, "102")).collect();
        storage.put_cdrs(&records).expect("store records");
    }
    pbx.start_again();

    let mut ids = Vec::new();
    let mut path = "/api/v1/cdrs?limit=2".to_string();
    for _ in 0..10 {
        let (code, page) = get(&pbx, &path);
        assert_eq!(code, 200, "{page}");
        ids.extend(page["cdrs"].as_array().expect("cdrs array").iter().map(|c| c["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/cdrs?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(ids, ["5", "4", "3", "2", "1"]);

    // Ended in [12:02:00, 12:04:00): calls 2 and 3; of those, 101 made call 2 only.
    let (_, page) = get(&pbx, "/api/v1/cdrs?from=2024-05-01T12:02:00Z&to=1714565040");
    let window: Vec<_> = page["cdrs"].as_array().unwrap().iter().map(|c| c["id"].clone()).collect();
    assert_eq!(window, ["3", "2"], "{page}");
    let (_, page) = get(&pbx, "/api/v1/cdrs?from=2024-05-01T14:02:00%2B02:00&to=1714565040&extension=101");
    let busy = &page["cdrs"][0];
    assert_eq!(page["cdrs"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!((busy["disposition"].as_str(), busy["answer"].as_str()), (Some("busy"), None), "{busy}");
    assert!(busy["hangup"].is_null() && busy["code"].is_null() && busy["reason"].is_null(), "{busy}");
    assert_eq!(
        (busy["start"].as_str(), busy["end"].as_str()),
        (Some("2024-05-01T12:01:30.000Z"), Some("2024-05-01T12:02:00.000Z"))
    );
    assert_eq!((busy["duration_s"].as_u64(), busy["total_s"].as_u64()), (Some(0), Some(30)));
    assert_eq!((busy["caller"].as_str(), busy["callee"].as_str()), (Some("101"), Some("102")));
    assert_eq!(busy["media"]["caller"]["packets_in"], 500);
    assert_eq!(busy["call_id"], "call-2@127.0.0.1");
    let (_, page) = get(&pbx, "/api/v1/cdrs?extension=102&limit=500");
    assert_eq!(page["cdrs"].as_array().map(Vec::len), Some(5), "callee matches too: {page}");
}
