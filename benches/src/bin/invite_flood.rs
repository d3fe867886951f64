//! `invite_flood`: unauthenticated INVITEs at a fixed rate, for benches/load/run.sh's `flood`
//! mode — the stranger of docs/SECURITY.md who floods pbx's SIP port while real phones call.
//!
//! Open loop: every INVITE is a new transaction (fresh branch, Call-ID and From tag), sent on
//! schedule whatever comes back, spread round-robin over one UDP socket per source address
//! (`--sources N` addresses from `--source-base`, 127.0.1.1 by default: on Linux all of
//! 127.0.0.0/8 is loopback), so a per-source limit sees `rate / N` per address. Nothing is
//! retransmitted and nothing is answered: a stranger does not care. Every datagram that comes
//! back is counted by its status code, which shows what one INVITE costs pbx on the wire (one
//! 407, or a 100 Trying and twelve 407s from Timer G).
//!
//! At the end it prints one line of `key=value` pairs: `sent`, `achieved` (INVITEs/s), `answers`
//! (datagrams back), `per_invite` (datagrams back per INVITE sent), and `code_NNN` counts.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: invite_flood --target ADDR:PORT --rate PER_S --duration-s S [--sources N] [--source-base IPV4] [--to USER]";
/// Longest pause between two rounds of sending and reading.
const TICK: Duration = Duration::from_millis(1);
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// Sockets are read in this many turns (see the loop).
const READ_SHARE: usize = 10;
/// Answers still arriving after the last INVITE are counted for this long.
const DRAIN: Duration = Duration::from_secs(2);

struct Options {
    target: SocketAddr,
    rate: u64,
    duration: Duration,
    sources: u32,
    base: Ipv4Addr,
    to: String,
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let get = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let need = |name: &str| get(name).ok_or(format!("{name} is required"));
    let number = |name: &str, v: String| v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a number"));
    let sources = number("--sources", get("--sources").unwrap_or("60".into()))?;
    if !(1..=60_000).contains(&sources) {
        return Err("--sources: 1–60000".into());
    }
    Ok(Options {
        target: need("--target")?.parse().map_err(|e| format!("--target: {e}"))?,
        rate: number("--rate", need("--rate")?)?,
        duration: Duration::from_secs(number("--duration-s", need("--duration-s")?)?),
        sources: sources as u32,
        base: get("--source-base").unwrap_or("127.0.1.1".into()).parse().map_err(|e| format!("--source-base: {e}"))?,
        to: get("--to").unwrap_or("101".into()),
    })
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("invite_flood: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut sockets = Vec::new();
    for n in 0..options.sources {
        let ip = Ipv4Addr::from(u32::from(options.base) + n);
        match UdpSocket::bind((ip, 0)).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("invite_flood: bind {ip}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let locals: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().expect("bound")).collect();
    let host = options.target.ip();
    let start = Instant::now();
    let end = start + options.duration;
    let (mut sent, mut answers) = (0u64, 0u64);
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    let run = std::process::id();
    let mut tick = 0u64;
    loop {
        let now = Instant::now();
        if now < end {
            let due = (now - start).as_micros() as u64 * options.rate / 1_000_000;
            while sent < due {
                let i = (sent % sockets.len() as u64) as usize;
                let local = locals[i];
                let invite = format!(
                    "INVITE sip:{to}@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-fl{run:x}-{sent:x};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:flood@{host}>;tag=fl{sent:x}\r\nTo: <sip:{to}@{host}>\r\nCall-ID: flood-{run:x}-{sent:x}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:flood@{local}>\r\nContent-Length: 0\r\n\r\n",
                    to = options.to
                );
                // A full socket buffer drops the INVITE: an open-loop flood does not wait.
                let _ = sockets[i].send_to(invite.as_bytes(), options.target);
                sent += 1;
            }
        } else if now > end + DRAIN {
            break;
        }
        // A tenth of the sockets per tick, each read every 10 ms: with hundreds of sources,
        // reading them all every millisecond would cost the generator more than the flood.
        tick += 1;
        let share = sockets.len().div_ceil(READ_SHARE);
        let first = (tick as usize % READ_SHARE) * share;
        let draining = now > end;
        for socket in
            sockets.iter().skip(if draining { 0 } else { first }).take(if draining { usize::MAX } else { share })
        {
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                answers += 1;
                let code = buf.get(8..11.min(n)).map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
                *codes.entry(code).or_default() += 1;
            }
        }
        std::thread::sleep(TICK);
    }
    let seconds = options.duration.as_secs_f64().max(1e-9);
    let per_invite = if sent == 0 { 0.0 } else { answers as f64 / sent as f64 };
    let mut line =
        format!("sent={sent} achieved={:.0} answers={answers} per_invite={per_invite:.3}", sent as f64 / seconds);
    for (code, n) in codes {
        line.push_str(&format!(" code_{code}={n}"));
    }
    println!("{line}");
    ExitCode::SUCCESS
}
