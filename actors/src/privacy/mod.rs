//! The data inventory: every kind of personal data pbx keeps, with its purpose, legal basis,
//! retention and where it is stored (GDPR Art. 30 record of processing; seed: the privacy
//! policy in `shared/seed/`).
//!
//! Each subsystem declares its categories here in the same change that introduces the data.
//! The retention reaper, the subject-rights API and the generated privacy notice (a later
//! issue) read this table; a node test checks that every redb table is declared.

/// How long a category is kept, as code will enforce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Until the data subject's record is deleted (e.g. the extension is removed).
    UntilDeleted,
    /// Until the binding expires or is removed; at most `registrar.max_expires_s`.
    UntilExpiry,
    /// Only in memory, for at most this many seconds (configurable; the default given).
    MemorySeconds(u32),
    /// Stored for this many days after the event, then deleted (configurable; the default given).
    Days(u32),
    /// Only in memory, while the call lasts (and at most the call's ending bound after it).
    CallDuration,
    /// Stored; the IP addresses in it are anonymised (IPv4 to /24, IPv6 to /48) this many days
    /// after the event, and the anonymised record deleted `deleted_after_days` after it.
    AnonymisedAfterDays { days: u32, deleted_after_days: u32 },
}

#[derive(Clone, Copy, Debug)]
pub struct DataCategory {
    /// Stable identifier, used by the reaper and the subject-rights API.
    pub id: &'static str,
    pub data: &'static str,
    pub purpose: &'static str,
    /// GDPR Art. 6(1) basis.
    pub legal_basis: &'static str,
    pub retention: Retention,
    /// Where it lives: `redb:<table>`, `memory`, or `log`.
    pub stored_in: &'static [&'static str],
}

/// Every category pbx keeps today.
pub const INVENTORY: &[DataCategory] = &[
    DataCategory {
        id: "extension",
        data: "extension number, display name, digest hashes H(user:realm:password) for MD5 and SHA-256; never the password",
        purpose: "authenticate the extension's phones and show its name",
        legal_basis: "Art. 6(1)(b) contract (providing the telephone service)",
        retention: Retention::UntilDeleted,
        stored_in: &["redb:extensions"],
    },
    DataCategory {
        id: "registration",
        data: "extension number, contact URI (IP address and port), source address, transport, Call-ID, CSeq, user agent",
        purpose: "deliver calls to the phones where they are registered",
        legal_basis: "Art. 6(1)(b) contract (providing the telephone service)",
        retention: Retention::UntilExpiry,
        stored_in: &["redb:bindings", "memory"],
    },
    DataCategory {
        id: "auth-failure",
        data: "source IP address and claimed user name of failed REGISTER authentications",
        purpose: "block password guessing (security of the service)",
        legal_basis: "Art. 6(1)(f) legitimate interest (security), Art. 32",
        // Kept for the failure window or the block, whichever is longer (defaults 60 s / 300 s).
        retention: Retention::MemorySeconds(300),
        stored_in: &["memory", "log"],
    },
    DataCategory {
        id: "cdr",
        data: "caller and callee extension numbers (callee: the dialled number), call start, answer and end times, outcome, who hung up, SIP Call-ID, codecs, media statistics (packets, bytes, loss, jitter)",
        purpose: "billing, troubleshooting, and the call history users see",
        legal_basis: "Art. 6(1)(b) contract (providing and billing the telephone service); Art. 6(1)(f) legitimate interest (troubleshooting)",
        // `calls.cdr_retention_days`, default 90: long enough to query a bill, short by default.
        retention: Retention::Days(90),
        stored_in: &["redb:cdrs"],
    },
    DataCategory {
        id: "call-in-progress",
        data: "caller and callee numbers and display names, SIP dialog identifiers (Call-ID, tags, contact URIs with IP addresses and ports), SDP media addresses, the RTP source addresses seen; the voice itself is relayed, never stored",
        purpose: "connect the call and carry its media",
        legal_basis: "Art. 6(1)(b) contract (providing the telephone service)",
        retention: Retention::CallDuration,
        stored_in: &["memory"],
    },
    DataCategory {
        id: "licence-service-log",
        data: "requesting IP address, time, the serial number asked about, the request (licence, unlocks, voucher redemption with the voucher code) and its outcome",
        purpose: "operating the licence and voucher service; detecting abuse (serial or voucher guessing)",
        legal_basis: "Art. 6(1)(f) legitimate interest (operating and securing the licence service)",
        // The seed's promise for the vendor's logs: IPs anonymised after 14 days
        // (`licence::desk::ANONYMISE_AFTER_S`); entries deleted after 90 (`LOG_KEEP_S`).
        retention: Retention::AnonymisedAfterDays { days: 14, deleted_after_days: 90 },
        stored_in: &["redb:licence_log"],
    },
];

/// The category with this id, if declared.
pub fn category(id: &str) -> Option<&'static DataCategory> {
    INVENTORY.iter().find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are unique and every category says where it is stored.
    #[test]
    fn inventory_is_well_formed() {
        for (i, c) in INVENTORY.iter().enumerate() {
            assert!(INVENTORY[..i].iter().all(|o| o.id != c.id), "duplicate id {}", c.id);
            assert!(!c.stored_in.is_empty() && !c.purpose.is_empty() && !c.legal_basis.is_empty(), "{}", c.id);
        }
        assert!(category("registration").is_some());
        assert!(category("nonexistent").is_none());
    }

    /// The licence log's declared retention is the one the desk enforces.
    #[test]
    fn licence_log_retention_matches_the_desk() {
        use crate::licence::desk::{ANONYMISE_AFTER_S, LOG_KEEP_S};
        let Some(DataCategory { retention: Retention::AnonymisedAfterDays { days, deleted_after_days }, .. }) =
            category("licence-service-log")
        else {
            panic!("licence-service-log must be declared with AnonymisedAfterDays");
        };
        assert_eq!(
            (u64::from(*days) * 86_400, u64::from(*deleted_after_days) * 86_400),
            (ANONYMISE_AFTER_S, LOG_KEEP_S)
        );
    }
}
