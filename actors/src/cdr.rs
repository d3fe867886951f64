//! Call detail records: what a finished call leaves behind, and the view of a call in progress.
//!
//! Pure types. The calls subsystem fills them in, the node stores finished ones (redb table
//! `cdrs`, privacy category `cdr`) through [`CdrStore`] and shows both through its API. The
//! serde derives are the storage form (postcard, wrapped in a version enum by the node); the
//! API's JSON shape is the node's (`node/src/http/`), so the two can evolve apart.

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// One finished call, as billing and the call history see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// Unique per node (set by the calls subsystem); records are keyed by `(end, id)`.
    pub id: u64,
    /// The caller's SIP Call-ID, to find the call in logs and packet captures.
    pub call_id: String,
    /// Extension number of the caller.
    pub caller: String,
    /// The dialled number (Request-URI user).
    pub callee: String,
    /// INVITE received.
    pub start: Timestamp,
    pub answer: Option<Timestamp>,
    pub end: Timestamp,
    pub disposition: Disposition,
    pub hangup: Option<HangupSide>,
    /// Negotiated codec on the caller's leg (`"PCMU"`, `"PCMA"`).
    pub codec_caller: Option<String>,
    pub codec_callee: Option<String>,
    /// Caller's leg, callee's leg.
    pub media: [MediaCounters; 2],
    /// This record goes on from an earlier one of the same call (its id): the call was
    /// transferred, and this is its part after that.
    pub follows: Option<u64>,
    /// The call was transferred when this record ended: who transferred to whom, and the
    /// record the call went on in.
    pub transfer: Option<Transferred>,
}

/// [`Cdr`] as stored before issue 18 (no transfer fields). Never edit it: postcard reads
/// fields by position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrV1 {
    pub id: u64,
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub start: Timestamp,
    pub answer: Option<Timestamp>,
    pub end: Timestamp,
    pub disposition: Disposition,
    pub hangup: Option<HangupSide>,
    pub codec_caller: Option<String>,
    pub codec_callee: Option<String>,
    pub media: [MediaCounters; 2],
}

impl From<CdrV1> for Cdr {
    fn from(c: CdrV1) -> Cdr {
        Cdr {
            id: c.id,
            call_id: c.call_id,
            caller: c.caller,
            callee: c.callee,
            start: c.start,
            answer: c.answer,
            end: c.end,
            disposition: c.disposition,
            hangup: c.hangup,
            codec_caller: c.codec_caller,
            codec_callee: c.codec_callee,
            media: c.media,
            follows: None,
            transfer: None,
        }
    }
}

/// A transfer that ended a record (see [`Cdr::transfer`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transferred {
    /// The extension that transferred the call.
    pub by: String,
    /// The number it was transferred to.
    pub to: String,
    /// The id of the record the call went on in.
    pub next: u64,
}

impl Cdr {
    /// Talk time, answer to end in whole seconds (what is billed); 0 when never answered.
    pub fn duration_s(&self) -> u64 {
        self.answer.map_or(0, |answer| self.end.saturating_since(answer).as_secs())
    }

    /// Whether `extension` took part: as caller, callee, or in a transfer (by or to).
    pub fn involves(&self, extension: &str) -> bool {
        self.caller == extension
            || self.callee == extension
            || self.transfer.as_ref().is_some_and(|t| t.by == extension || t.to == extension)
    }
}

/// How the call ended, from the caller's point of view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Answered,
    Busy,
    NoAnswer,
    /// The caller gave up before an answer (CANCEL).
    Cancelled,
    /// The callee refused with a final response other than busy.
    Rejected {
        code: u16,
    },
    /// 480: the callee has no registered phone.
    Unavailable,
    NotFound,
    Failed {
        reason: String,
    },
}

impl Disposition {
    /// The stable name the API uses.
    pub fn name(&self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Busy => "busy",
            Disposition::NoAnswer => "no_answer",
            Disposition::Cancelled => "cancelled",
            Disposition::Rejected { .. } => "rejected",
            Disposition::Unavailable => "unavailable",
            Disposition::NotFound => "not_found",
            Disposition::Failed { .. } => "failed",
        }
    }
}

/// Who hung up an answered call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupSide {
    Caller,
    Callee,
    /// The exchange ended it: RTP timeout, failure.
    Pbx,
}

impl HangupSide {
    /// The stable name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            HangupSide::Caller => "caller",
            HangupSide::Callee => "callee",
            HangupSide::Pbx => "pbx",
        }
    }
}

/// RTP counters of one leg, as the relay saw them (`in` = from the phone, `out` = to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaCounters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets missing from the phone's sequence numbers.
    pub lost: u64,
    /// Interarrival jitter (RFC 3550 §6.4.1) of the phone's stream.
    pub jitter_us: u64,
}

impl MediaCounters {
    /// What was counted since `before` (counters taken earlier from the same relay); the jitter
    /// is the latest estimate.
    pub fn since(self, before: MediaCounters) -> MediaCounters {
        MediaCounters {
            packets_in: self.packets_in.saturating_sub(before.packets_in),
            bytes_in: self.bytes_in.saturating_sub(before.bytes_in),
            packets_out: self.packets_out.saturating_sub(before.packets_out),
            bytes_out: self.bytes_out.saturating_sub(before.bytes_out),
            lost: self.lost.saturating_sub(before.lost),
            jitter_us: self.jitter_us,
        }
    }
}

impl From<crate::media::relay::SideStats> for MediaCounters {
    fn from(stats: crate::media::relay::SideStats) -> Self {
        MediaCounters {
            packets_in: stats.packets_in,
            bytes_in: stats.bytes_in,
            packets_out: stats.packets_out,
            bytes_out: stats.bytes_out,
            lost: stats.lost,
            jitter_us: stats.jitter_us,
        }
    }
}

/// A call in progress, as `GET /api/v1/calls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveCall {
    pub id: u64,
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub start: Timestamp,
    pub answer: Option<Timestamp>,
    /// `"ringing"`, `"answered"` or `"ending"`.
    pub state: String,
    pub codec_caller: Option<String>,
    pub codec_callee: Option<String>,
    /// Caller's leg, callee's leg.
    pub media: [MediaCounters; 2],
}

/// Where finished calls' records go: redb in the product, memory in tests. `persist` returns
/// only once the record is durable (or storing it failed), so it may block on the disk: call it
/// from a thread that may block, never from an async task. `submit` is the same without
/// blocking, for stores that queue: the record is queued and `stored` hears the outcome once it
/// is durable; a store that cannot queue it at once (none of its own, or full) gives both back,
/// and the caller uses `persist` on a thread that may block.
pub trait CdrStore: Send + Sync + 'static {
    fn persist(&self, cdr: Cdr) -> Result<(), crate::store::StoreError>;

    fn submit(&self, cdr: Cdr, stored: CdrStored) -> Result<(), Box<(Cdr, CdrStored)>> {
        Err(Box::new((cdr, stored)))
    }
}

/// Told once whether a submitted record is stored; must not block.
pub type CdrStored = Box<dyn FnOnce(Result<(), crate::store::StoreError>) + Send>;

#[cfg(test)]
mod tests {
    use super::*;

    fn cdr(answer: Option<Timestamp>) -> Cdr {
        Cdr {
            id: 1,
            call_id: "c".into(),
            caller: "100".into(),
            callee: "101".into(),
            start: Timestamp::from_secs(10),
            answer,
            end: Timestamp::from_millis(75_900),
            disposition: Disposition::Answered,
            hangup: Some(HangupSide::Caller),
            codec_caller: None,
            codec_callee: None,
            media: Default::default(),
            follows: None,
            transfer: None,
        }
    }

    /// Duration counts from the answer in whole seconds; an unanswered call lasts 0 s.
    #[test]
    fn duration_counts_talk_time_only() {
        assert_eq!(cdr(Some(Timestamp::from_secs(15))).duration_s(), 60);
        assert_eq!(cdr(None).duration_s(), 0);
        assert_eq!(cdr(Some(Timestamp::from_secs(80))).duration_s(), 0, "answer after end saturates");
    }

    /// A call involves its caller and its callee, nobody else.
    #[test]
    fn involves_caller_and_callee() {
        let c = cdr(None);
        assert!(c.involves("100") && c.involves("101") && !c.involves("10") && !c.involves("102"));
    }

    /// The records round-trip through postcard, the storage form.
    #[test]
    fn postcard_round_trip() {
        let mut c = cdr(Some(Timestamp::from_secs(12)));
        c.disposition = Disposition::Failed { reason: "no media port".into() };
        c.media[1].jitter_us = 2_500;
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Cdr>(&bytes).unwrap(), c);
    }
}
