//! An intruder: a password guesser from outside the office, as sipvicious' `svcrack` is. It
//! sends REGISTERs with wrong passwords — for extensions that exist and for names that do
//! not — one after the other, each answering the digest challenge (RFC 3261 §22.2) of the
//! last 401, until its guesses run out, the node blocks it (403) or an answer does not come.
//!
//! It gives the node's security log something to hold, so that the retention reaper's
//! anonymise and delete rules have records to work on. Sans-IO, like [`crate::phone`]: time
//! comes in as `now`, datagrams in and out as values, randomness from its seed. It does not
//! retransmit (a lost datagram ends the burst) and it never guesses right: the office's
//! passwords are drawn from the seed, its guesses from a dictionary.

use crate::phone::{Challenge, authorization};
use bytes::Bytes;
use pbx_actors::Timestamp;
use pbx_actors::sip::message::{Message, Name, Response, parse_datagram};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// How long it waits for an answer before it gives up (no retransmissions).
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Passwords people choose; `{}` is the user name.
const DICTIONARY: [&str; 8] = ["1234", "password", "{}", "0000", "12345678", "admin", "{}{}", "secret"];

#[derive(Debug)]
pub enum ScannerOutput {
    Transmit {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// A final answer to one of its REGISTERs.
    Answered {
        code: u16,
    },
    /// The burst is over.
    Over,
}

pub struct Scanner {
    address: SocketAddr,
    pbx: SocketAddr,
    /// (user, password) still to try.
    guesses: VecDeque<(String, String)>,
    call_id: String,
    cseq: u32,
    rng: StdRng,
    deadline: Option<Timestamp>,
    outputs: VecDeque<ScannerOutput>,
    /// REGISTERs sent.
    pub sent: u64,
}

impl Scanner {
    /// A burst of `count` guesses from `address`; users from `users` (names that exist and
    /// names that do not). It sends its first REGISTER, unauthenticated, at once.
    pub fn new(
        address: SocketAddr,
        pbx: SocketAddr,
        users: &[String],
        count: usize,
        seed: u64,
        now: Timestamp,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let guesses = (0..count)
            .filter_map(|_| {
                let user = users.get(rng.random_range(0..users.len().max(1)))?.clone();
                let password = DICTIONARY[rng.random_range(0..DICTIONARY.len())].replace("{}", &user);
                Some((user, password))
            })
            .collect();
        let call_id = format!("{:016x}@{}", rng.random::<u64>(), address.ip());
        let mut scanner =
            Scanner { address, pbx, guesses, call_id, cseq: 0, rng, deadline: None, outputs: VecDeque::new(), sent: 0 };
        let first = scanner.guesses.front().map(|(user, _)| user.clone());
        match first {
            Some(user) => scanner.register(now, &user, None),
            None => scanner.outputs.push_back(ScannerOutput::Over),
        }
        scanner
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn poll_output(&mut self) -> Option<ScannerOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.deadline
    }

    /// No answer in time: the burst ends.
    pub fn timeout(&mut self, now: Timestamp) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.over();
        }
    }

    /// A datagram for the scanner: the answer to its last REGISTER, or a stray.
    pub fn datagram(&mut self, now: Timestamp, bytes: &[u8]) {
        let Ok(Message::Response(response)) = parse_datagram(bytes) else { return };
        let ours = response.header(&Name::CALL_ID) == Some(self.call_id.as_str())
            && response.cseq().is_some_and(|c| c.cseq == self.cseq);
        if self.deadline.is_none() || !ours || response.code < 200 {
            return;
        }
        self.outputs.push_back(ScannerOutput::Answered { code: response.code });
        match (response.code, challenge(&response)) {
            (401, Some(challenge)) => match self.guesses.pop_front() {
                Some((user, password)) => {
                    let uri = format!("sip:{}", self.pbx.ip());
                    let cnonce = format!("{:08x}", self.rng.random::<u32>());
                    let auth = authorization(&user, &password, &challenge, "REGISTER", &uri, &cnonce, 1);
                    self.register(now, &user, Some(auth));
                }
                None => self.over(),
            },
            _ => self.over(),
        }
    }

    fn over(&mut self) {
        self.deadline = None;
        self.outputs.push_back(ScannerOutput::Over);
    }

    fn register(&mut self, now: Timestamp, user: &str, authorization: Option<String>) {
        self.cseq += 1;
        self.sent += 1;
        let domain = self.pbx.ip();
        let branch = format!("z9hG4bK{:016x}", self.rng.random::<u64>());
        let tag = format!("{:08x}", self.rng.random::<u32>());
        let mut text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: {}\r\n\
             CSeq: {} REGISTER\r\nContact: <sip:{user}@{}>\r\nExpires: 3600\r\n",
            self.address, self.call_id, self.cseq, self.address
        );
        if let Some(value) = authorization {
            text.push_str(&format!("Authorization: {value}\r\n"));
        }
        text.push_str("User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n");
        self.deadline = Some(now + ANSWER_WAIT);
        self.outputs.push_back(ScannerOutput::Transmit { from: self.address, to: self.pbx, bytes: Bytes::from(text) });
    }
}

/// The MD5 digest challenge of a 401, if it has one.
fn challenge(response: &Response) -> Option<Challenge> {
    response.headers.get_raw(&Name::WWW_AUTHENTICATE).find_map(|v| Challenge::parse(v.as_str()).filter(|c| c.md5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::registrar::{Algorithm, Registrar, RegistrarConfig, RegistrarInput, RegistrarOutput};
    use pbx_actors::sip::message::Transport;

    /// Against the product's registrar: every guess is a 401 (the first unauthenticated, the
    /// rest wrong passwords, counted as failures), until the fifth failure for the user blocks
    /// it from this source and the next REGISTER gets 403, which ends the burst.
    #[test]
    fn guesses_fail_until_the_registrar_blocks_the_source() {
        let now = Timestamp::from_secs(1_767_571_200);
        let config = RegistrarConfig { digest_algorithms: vec![Algorithm::Md5], ..RegistrarConfig::default() };
        let mut registrar = Registrar::new(config, [7; 32], Vec::new(), Vec::new(), now);
        registrar.handle(
            now,
            RegistrarInput::PutExtension {
                number: "1000".into(),
                display_name: "a".into(),
                password: "pw-1000".into(),
            },
        );
        while registrar.poll_output().is_some() {}
        let (address, pbx) = ("203.0.113.9:5060".parse().unwrap(), "10.0.0.1:5060".parse().unwrap());
        let users = ["1000".to_owned()];
        let mut scanner = Scanner::new(address, pbx, &users, 10, 3, now);
        let (mut codes, mut failures, mut blocked, mut over) = (Vec::new(), 0, 0, false);
        for tx in 0..20 {
            let mut sent = None;
            while let Some(out) = scanner.poll_output() {
                match out {
                    ScannerOutput::Transmit { bytes, .. } => sent = Some(bytes),
                    ScannerOutput::Answered { code } => codes.push(code),
                    ScannerOutput::Over => over = true,
                }
            }
            let Some(bytes) = sent else { break };
            let Ok(Message::Request(request)) = parse_datagram(&bytes) else { panic!("a request") };
            registrar.handle(now, RegistrarInput::Register { tx, request, source: address, transport: Transport::Udp });
            let mut response = None;
            while let Some(out) = registrar.poll_output() {
                match out {
                    RegistrarOutput::Respond { response: r, .. } => response = Some(r),
                    RegistrarOutput::Event(pbx_actors::registrar::RegistrarEvent::AuthFailed { .. }) => failures += 1,
                    RegistrarOutput::Event(pbx_actors::registrar::RegistrarEvent::Blocked { .. }) => blocked += 1,
                    _ => {}
                }
            }
            scanner.datagram(now, &response.expect("an answer").to_bytes());
        }
        assert!(over, "the burst ended");
        assert_eq!(codes, [401, 401, 401, 401, 401, 401, 403]);
        assert_eq!((failures, blocked, scanner.sent), (5, 1, 7));
        assert_eq!(scanner.poll_timeout(), None);
    }

    /// No answer: the burst gives up at its deadline, and a late answer changes nothing.
    #[test]
    fn silence_ends_the_burst() {
        let now = Timestamp::from_secs(100);
        let (address, pbx) = ("203.0.113.9:5060".parse().unwrap(), "10.0.0.1:5060".parse().unwrap());
        let mut scanner = Scanner::new(address, pbx, &["1000".to_owned()], 3, 1, now);
        assert!(matches!(scanner.poll_output(), Some(ScannerOutput::Transmit { .. })));
        scanner.timeout(now + Duration::from_secs(1));
        assert!(scanner.poll_output().is_none());
        scanner.timeout(now + ANSWER_WAIT);
        assert!(matches!(scanner.poll_output(), Some(ScannerOutput::Over)));
        assert_eq!(scanner.poll_timeout(), None);
    }
}
