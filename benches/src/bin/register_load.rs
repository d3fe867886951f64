//! `register_load`: an open-loop REGISTER load generator for benches/load/run.sh, SIPp-like but
//! able to answer SHA-256 digest challenges (RFC 8760), which SIPp 3.6 cannot: its
//! `[authentication]` keyword takes the first `WWW-Authenticate` of a 401 and refuses any
//! algorithm but MD5, while pbx offers SHA-256 first, as RFC 8760 §2.4 asks.
//!
//! One thread, one UDP socket. Calls start at a fixed rate (like SIPp's `-r`), each one
//! `REGISTER → [401 → REGISTER with Authorization] → 200`, users taken in turn from a SIPp
//! injection file (`user;password;…`, an optional `SEQUENTIAL` first line). Requests are
//! retransmitted on RFC 3261 Timer E (T1 = 500 ms doubling to T2 = 4 s); a call fails on any
//! final response but the expected one, or after `RETRANSMISSIONS_MAX` retransmissions (SIPp's
//! default for non-INVITE requests). At the end it prints one line of `key=value` pairs and
//! exits 0 only if no call failed.
//!
//! `--call-id per-call` (the default, as SIPp's `[call_id]`) gives every flow a new Call-ID, so
//! a registrar sees each as a new binding replacing the old one. `--call-id per-user` keeps one
//! Call-ID per user with a rising CSeq, as a phone refreshing its registration does (RFC 3261
//! §10.2.4): a registrar sees refreshes. Call-IDs name the run (the process id unless
//! `--run N`): with `--run` and a `--cseq-base` above the last CSeq of an earlier run with the
//! same id, a run refreshes the bindings that earlier run made, from its first flow on.
//!
//! What it does not do: TCP, proxies, more than one binding per REGISTER, or anything but the
//! REGISTER flow. It is a measuring tool, not a SIP stack: it reads only the status line,
//! Call-ID, CSeq and WWW-Authenticate of the responses.

use pbx_actors::registrar::digest::Algorithm;
use pbx_benches::digest_client::{Challenge, answer};
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// SIPp's default `-max_non_invite_retrans`.
const RETRANSMISSIONS_MAX: u32 = 7;
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Longest wait in one receive, so that sends stay on schedule at low rates too.
const POLL_MAX: Duration = Duration::from_millis(5);
const DATAGRAM_BYTES_MAX: usize = 65_535;

const USAGE: &str = "usage: register_load --target ADDR:PORT --users FILE --rate PER_S --calls N \
[--auth none|md5|sha256] [--call-id per-call|per-user] [--run N] [--cseq-base N] [--domain D] [--expires S] \
[--local ADDR:PORT] [--max-inflight N] [--deadline-s S]";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    Digest(Algorithm),
}

struct Options {
    target: SocketAddr,
    local: SocketAddr,
    users: Vec<(String, String)>,
    rate: f64,
    calls: u64,
    auth: Auth,
    domain: String,
    expires: u32,
    call_id_per_user: bool,
    run: Option<u32>,
    cseq_base: u64,
    max_inflight: usize,
    deadline: Duration,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut get = HashMap::new();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        get.insert(flag, value);
    }
    let take = |name: &str| get.get(name).cloned();
    let need = |name: &str| take(name).ok_or(format!("{name} is required"));
    let parse = |name: &str, v: String| v.parse::<f64>().map_err(|_| format!("{name}: {v:?} is not a number"));
    let target: SocketAddr = need("--target")?.parse().map_err(|e| format!("--target: {e}"))?;
    let local = take("--local").unwrap_or("127.0.0.1:0".into()).parse().map_err(|e| format!("--local: {e}"))?;
    let users_file = need("--users")?;
    let text = std::fs::read_to_string(&users_file).map_err(|e| format!("read {users_file}: {e}"))?;
    let users: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && *l != "SEQUENTIAL" && *l != "RANDOM")
        .map(|l| {
            let mut fields = l.split(';');
            (fields.next().unwrap_or("").to_owned(), fields.next().unwrap_or("").to_owned())
        })
        .collect();
    if users.is_empty() {
        return Err(format!("{users_file}: no users"));
    }
    let auth = match take("--auth").as_deref().unwrap_or("md5") {
        "none" => Auth::None,
        "md5" => Auth::Digest(Algorithm::Md5),
        "sha256" => Auth::Digest(Algorithm::Sha256),
        other => return Err(format!("--auth: {other:?} is not none, md5 or sha256")),
    };
    let call_id_per_user = match take("--call-id").as_deref().unwrap_or("per-call") {
        "per-call" => false,
        "per-user" => true,
        other => return Err(format!("--call-id: {other:?} is not per-call or per-user")),
    };
    let run =
        take("--run").map(|v| v.parse::<u32>().map_err(|_| format!("--run: {v:?} is not a number"))).transpose()?;
    let cseq_base = take("--cseq-base").unwrap_or("1".into());
    let cseq_base = cseq_base.parse::<u64>().map_err(|_| format!("--cseq-base: {cseq_base:?} is not a number"))?;
    let rate = parse("--rate", need("--rate")?)?;
    let calls = parse("--calls", need("--calls")?)? as u64;
    if rate <= 0.0 || calls == 0 {
        return Err("--rate and --calls must be positive".into());
    }
    Ok(Options {
        target,
        local,
        users,
        rate,
        calls,
        auth,
        domain: take("--domain").unwrap_or(target.ip().to_string()),
        call_id_per_user,
        run,
        cseq_base,
        expires: parse("--expires", take("--expires").unwrap_or("3600".into()))? as u32,
        max_inflight: parse("--max-inflight", take("--max-inflight").unwrap_or("10000".into()))? as usize,
        deadline: Duration::from_secs_f64(parse("--deadline-s", take("--deadline-s").unwrap_or("300".into()))?),
    })
}

#[derive(PartialEq, Eq)]
enum State {
    /// Waiting for the answer to the first REGISTER (401, or 200 without auth).
    First,
    /// Waiting for the answer to the REGISTER with credentials.
    Second,
}

struct Call {
    user: usize,
    /// CSeq of the request in flight.
    cseq: u64,
    state: State,
    started: Instant,
    /// The request in flight, for retransmission.
    request: Vec<u8>,
    retransmissions: u32,
    interval: Duration,
    /// Bumped whenever `request` changes, so stale timers are ignored.
    generation: u32,
}

#[derive(Default)]
struct Counters {
    ok: u64,
    failed: u64,
    retransmissions: u64,
    timeouts: u64,
    unexpected: u64,
    /// Flows not started because every user had one in flight.
    skipped: u64,
    /// Status codes of the unexpected final responses, for the summary line.
    unexpected_codes: std::collections::BTreeMap<u16, u64>,
    latencies_us: Vec<u32>,
}

struct Load {
    options: Options,
    socket: UdpSocket,
    local: SocketAddr,
    run: u32,
    calls: HashMap<u64, Call>,
    /// With `--call-id per-user`: the call each user's Call-ID belongs to now.
    user_calls: HashMap<usize, u64>,
    /// The user the next flow starts with.
    next_user: usize,
    /// (when, call, generation), earliest first.
    timers: BinaryHeap<std::cmp::Reverse<(Instant, u64, u32)>>,
    counters: Counters,
}

impl Load {
    fn call_id(&self, number: u64, user: usize) -> String {
        if self.options.call_id_per_user {
            format!("r{user}-{}@register-load", self.run)
        } else {
            format!("{number}-{}@register-load", self.run)
        }
    }

    fn register(&self, number: u64, call: &Call, authorization: Option<&str>) -> Vec<u8> {
        let (user, _) = &self.options.users[call.user];
        let o = &self.options;
        let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        format!(
            "REGISTER sip:{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{run}-{number}-{cseq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={run}-{number}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local};transport=udp>\r\n\
             Expires: {expires}\r\n\
             {auth}User-Agent: register-load\r\n\
             Content-Length: 0\r\n\r\n",
            target = o.target,
            local = self.local,
            run = self.run,
            call_id = self.call_id(number, call.user),
            cseq = call.cseq,
            domain = o.domain,
            expires = o.expires,
        )
        .into_bytes()
    }

    fn send(&mut self, number: u64) {
        let call = &self.calls[&number];
        let _ = self.socket.send_to(&call.request, self.options.target);
        let at = Instant::now() + call.interval;
        self.timers.push(std::cmp::Reverse((at, number, call.generation)));
    }

    fn start(&mut self, number: u64) {
        // Users in turn, as SIPp takes the lines of its injection file. With one Call-ID per
        // user, a user whose previous flow is still waiting for an answer (a retransmission
        // under way) is skipped, so that the flow in flight keeps its Call-ID to itself.
        let users = self.options.users.len();
        let mut user = self.next_user;
        if self.options.call_id_per_user {
            let mut tries = 0;
            while self.user_calls.contains_key(&user) && tries < users {
                user = (user + 1) % users;
                tries += 1;
            }
            if tries == users {
                // Every user is busy: far past capacity. Counted failed without being sent.
                self.counters.failed += 1;
                self.counters.skipped += 1;
                return;
            }
            self.user_calls.insert(user, number);
        }
        self.next_user = (user + 1) % users;
        // Rises with every request of the same Call-ID, across flows too (per-user mode).
        let cseq = self.options.cseq_base + 2 * number;
        let mut call = Call {
            user,
            cseq,
            state: State::First,
            started: Instant::now(),
            request: Vec::new(),
            retransmissions: 0,
            interval: T1,
            generation: 0,
        };
        call.request = self.register(number, &call, None);
        self.calls.insert(number, call);
        self.send(number);
    }

    fn finish(&mut self, number: u64, ok: bool) {
        let Some(call) = self.calls.remove(&number) else { return };
        if self.user_calls.get(&call.user) == Some(&number) {
            self.user_calls.remove(&call.user);
        }
        if ok {
            self.counters.ok += 1;
            let us = call.started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            self.counters.latencies_us.push(us);
        } else {
            self.counters.failed += 1;
        }
    }

    fn receive(&mut self, datagram: &[u8]) {
        let Ok(text) = std::str::from_utf8(datagram) else { return };
        let Some(response) = Response::read(text) else { return };
        let Some(number) = response.call_number(self.run, &self.user_calls) else { return };
        let Some(call) = self.calls.get(&number) else { return };
        if response.cseq != Some(call.cseq) || response.code < 200 {
            return;
        }
        match (response.code, &call.state, self.options.auth) {
            (200, State::First, Auth::None) | (200, State::Second, _) => self.finish(number, true),
            (401, State::First, Auth::Digest(algorithm)) => {
                let Some(challenge) = response.challenge(algorithm) else {
                    self.counters.unexpected += 1;
                    return self.finish(number, false);
                };
                let (user, password) = self.options.users[call.user].clone();
                let uri = format!("sip:{}", self.options.target);
                let value = answer(algorithm, &user, &password, &uri, &challenge);
                let call = self.calls.get_mut(&number).expect("looked up above");
                call.state = State::Second;
                call.cseq += 1;
                let call = &self.calls[&number];
                let request = self.register(number, call, Some(&value));
                let call = self.calls.get_mut(&number).expect("looked up above");
                call.request = request;
                call.generation += 1;
                call.retransmissions = 0;
                call.interval = T1;
                self.send(number);
            }
            (code, _, _) => {
                self.counters.unexpected += 1;
                *self.counters.unexpected_codes.entry(code).or_default() += 1;
                self.finish(number, false);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((at, number, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(call) = self.calls.get_mut(&number) else { continue };
            if call.generation != generation {
                continue;
            }
            if call.retransmissions >= RETRANSMISSIONS_MAX {
                self.counters.timeouts += 1;
                self.finish(number, false);
                continue;
            }
            call.retransmissions += 1;
            call.interval = (call.interval * 2).min(T2);
            self.counters.retransmissions += 1;
            self.send(number);
        }
    }
}

/// The parts of a response this tool reads.
struct Response<'a> {
    code: u16,
    call_id: Option<&'a str>,
    cseq: Option<u64>,
    challenges: Vec<&'a str>,
}

impl<'a> Response<'a> {
    fn read(text: &'a str) -> Option<Response<'a>> {
        let head = text.split("\r\n\r\n").next()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.strip_prefix("SIP/2.0 ")?;
        let code = status.get(..3)?.parse().ok()?;
        let mut response = Response { code, call_id: None, cseq: None, challenges: Vec::new() };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("Call-ID") || name.eq_ignore_ascii_case("i") {
                response.call_id = Some(value);
            } else if name.eq_ignore_ascii_case("CSeq") {
                response.cseq = value.split_whitespace().next().and_then(|n| n.parse().ok());
            } else if name.eq_ignore_ascii_case("WWW-Authenticate") {
                response.challenges.push(value);
            }
        }
        Some(response)
    }

    fn call_number(&self, run: u32, user_calls: &HashMap<usize, u64>) -> Option<u64> {
        let (id, rest) = self.call_id?.split_once('-')?;
        (rest.split('@').next()? == run.to_string()).then_some(())?;
        match id.strip_prefix('r') {
            Some(user) => user_calls.get(&user.parse().ok()?).copied(),
            None => id.parse().ok(),
        }
    }

    /// The challenge for `algorithm` (a challenge without `algorithm=` is MD5, RFC 7616 §3.3).
    fn challenge(&self, algorithm: Algorithm) -> Option<Challenge> {
        self.challenges.iter().filter_map(|c| Challenge::read(c)).find(|c| c.algorithm == algorithm)
    }
}

/// The generator socket's receive buffer asked for (the kernel caps it at `net.core.rmem_max`).
const GENERATOR_RECEIVE_BUFFER_BYTES: usize = 8 << 20;

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("register_load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let socket = match UdpSocket::bind(options.local) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("register_load: bind {}: {e}", options.local);
            return ExitCode::from(2);
        }
    };
    // One socket stands for thousands of phones: with Linux's default 208 KiB buffer a burst of
    // answers (a server that reads and answers its queue in batches) overflowed the generator's
    // socket, and those drops showed as the server's retransmissions. As large as the system
    // allows (`net.core.rmem_max`), like pbx's own SIP socket.
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(GENERATOR_RECEIVE_BUFFER_BYTES) {
        eprintln!("register_load: SO_RCVBUF: {e} (the default buffer stays)");
    }
    let local = socket.local_addr().expect("a bound socket has an address");
    let run = options.run.unwrap_or_else(std::process::id);
    let mut load = Load {
        options,
        socket,
        local,
        run,
        calls: HashMap::new(),
        user_calls: HashMap::new(),
        next_user: 0,
        timers: BinaryHeap::new(),
        counters: Counters::default(),
    };
    let interval = Duration::from_secs_f64(1.0 / load.options.rate);
    let begin = Instant::now();
    let mut started = 0u64;
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    let mut deadline_hit = false;
    loop {
        let now = Instant::now();
        if now - begin > load.options.deadline {
            deadline_hit = true;
            break;
        }
        // Open loop: every call whose start time has come starts now (bounded by max-inflight).
        while started < load.options.calls
            && begin + interval.mul_f64(started as f64) <= now
            && load.calls.len() < load.options.max_inflight
        {
            load.start(started);
            started += 1;
        }
        load.fire_timers(now);
        if started == load.options.calls && load.calls.is_empty() {
            break;
        }
        let next_start =
            if started < load.options.calls { begin + interval.mul_f64(started as f64) } else { now + POLL_MAX };
        let next_timer = load.timers.peek().map(|t| t.0.0).unwrap_or(now + POLL_MAX);
        let wait = next_start.min(next_timer).saturating_duration_since(Instant::now());
        let wait = wait.clamp(Duration::from_micros(20), POLL_MAX);
        let _ = load.socket.set_read_timeout(Some(wait));
        // Drain everything that is waiting, then go back to the schedule.
        let mut first = true;
        while let Ok(n) = load.socket.recv(&mut buf) {
            load.receive(&buf[..n]);
            if first {
                first = false;
                let _ = load.socket.set_nonblocking(true);
            }
        }
        let _ = load.socket.set_nonblocking(false);
    }
    let elapsed = begin.elapsed().as_secs_f64();
    let unfinished = load.calls.len() as u64 + (load.options.calls - started);
    let c = &mut load.counters;
    c.failed += unfinished;
    c.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &c.latencies_us;
        if l.is_empty() { 0.0 } else { l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0 }
    };
    println!(
        "target_rate={} calls={} ok={} failed={} timeouts={} unexpected={} retransmissions={} elapsed_s={:.2} \
         achieved_rate={:.1} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_max={:.2} cpu_s={:.2} deadline_hit={} \
         unexpected_codes={}",
        load.options.rate,
        load.options.calls,
        c.ok,
        c.failed,
        c.timeouts,
        c.unexpected,
        c.retransmissions,
        elapsed,
        c.ok as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        pbx_benches::cpu_seconds(),
        deadline_hit,
        if c.unexpected_codes.is_empty() {
            "-".to_owned()
        } else {
            c.unexpected_codes.iter().map(|(code, n)| format!("{code}:{n}")).collect::<Vec<_>>().join(",")
        },
    );
    if c.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
