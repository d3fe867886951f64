//! `tls_register_load`: REGISTER over SIP over TLS from many connections at once, for the
//! side-by-side run of pbx and Kamailio's `tls` module (docs/PERFORMANCE.md). SIPp here is
//! built without TLS, so this is the generator.
//!
//! Each of `--connections` threads opens one TLS connection (trusting only the certificate with
//! `--fingerprint`, TLS 1.3) as user `--first-user + i` and, until `--seconds` have passed,
//! registers again and again on it: REGISTER → 401 → REGISTER with the digest answer (password
//! `--password-prefix` + user, the rule of benches/load/kamailio.cfg) → 200; a new Call-ID per
//! registration, so every one is a new binding and a full digest (`--refresh`: one Call-ID per
//! connection, so every registration after the first refreshes the same binding). It prints the registrations
//! completed, their rate, and the handshakes (one per connection).
//!
//!   tls_register_load --target 127.0.0.1:5061 --fingerprint AB:CD:… --connections 50 --seconds 10

use pbx_actors::registrar::digest::Algorithm;
use pbx_benches::digest_client::{Challenge, answer};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: tls_register_load --target ADDR:PORT --fingerprint FP [--connections N] [--seconds S] \
[--first-user N] [--password-prefix P] [--domain D] [--refresh]";

struct Options {
    target: SocketAddr,
    fingerprint: String,
    connections: u32,
    seconds: f64,
    first_user: u32,
    password_prefix: String,
    domain: String,
    /// One Call-ID per connection (refreshes of one binding), not one per registration.
    refresh: bool,
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let take = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let need = |flag: &str| take(flag).ok_or_else(|| format!("{flag} is required\n{USAGE}"));
    let number = |flag: &str, default: &str| -> Result<f64, String> {
        let value = take(flag).unwrap_or(default.into());
        value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))
    };
    let target: SocketAddr = need("--target")?.parse().map_err(|e| format!("--target: {e}"))?;
    Ok(Options {
        target,
        fingerprint: need("--fingerprint")?,
        connections: number("--connections", "50")? as u32,
        seconds: number("--seconds", "10")?,
        first_user: number("--first-user", "1000")? as u32,
        password_prefix: take("--password-prefix").unwrap_or("pw-".into()),
        domain: take("--domain").unwrap_or(target.ip().to_string()),
        refresh: args.iter().any(|a| a == "--refresh"),
    })
}

/// Reads one SIP message (head + Content-Length body) from `stream`, keeping what follows.
fn read_message(stream: &mut impl Read, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-length")))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            if buf.len() >= total {
                let message = String::from_utf8_lossy(&buf[..total]).to_string();
                buf.drain(..total);
                return Some(message);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn register(user: &str, domain: &str, local: SocketAddr, call_id: &str, cseq: u64, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-{call_id}-{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag={call_id}\r\nTo: <sip:{user}@{domain}>\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{local};transport=tls>\r\nExpires: 600\r\n\
{auth}Content-Length: 0\r\n\r\n"
    )
}

fn status(message: &str) -> Option<u16> {
    message.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn run_connection(options: &Options, index: u32, deadline: Instant, done: &AtomicU64, failed: &AtomicU64) {
    let user = (options.first_user + index).to_string();
    let password = format!("{}{user}", options.password_prefix);
    let uri = format!("sip:{}", options.domain);
    let Ok(mut stream) = pbx_tests::tls::connect(options.target, &options.fingerprint, pbx_tests::tls::Version::Tls13)
    else {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let local = stream.sock.local_addr().expect("local address");
    let _ = stream.sock.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut cseq = 0u64;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let call_id = if options.refresh { format!("tls-{index}") } else { format!("tls-{index}-{n}") };
        cseq += 1;
        let first = register(&user, &options.domain, local, &call_id, cseq, None);
        if stream.write_all(first.as_bytes()).is_err() {
            break;
        }
        let Some(challenge) = read_message(&mut stream, &mut buf) else { break };
        // pbx offers SHA-256 and MD5 (a header each), Kamailio MD5: answer MD5 on both.
        let md5 = challenge.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let read = name.trim().eq_ignore_ascii_case("www-authenticate").then(|| Challenge::read(value.trim()))?;
            read.filter(|c| c.algorithm == Algorithm::Md5)
        });
        let Some(challenge) = md5 else {
            failed.fetch_add(1, Ordering::Relaxed);
            break;
        };
        cseq += 1;
        let auth = answer(Algorithm::Md5, &user, &password, &uri, &challenge);
        let second = register(&user, &options.domain, local, &call_id, cseq, Some(&auth));
        if stream.write_all(second.as_bytes()).is_err() {
            break;
        }
        match read_message(&mut stream, &mut buf).as_deref().and_then(status) {
            Some(200) => done.fetch_add(1, Ordering::Relaxed),
            _ => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("tls_register_load: {e}");
            return ExitCode::from(2);
        }
    };
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.seconds);
    let threads: Vec<_> = (0..options.connections)
        .map(|i| {
            let (options, done, failed) = (options.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || run_connection(&options, i, deadline, &done, &failed))
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "connections {} registrations {done} failed {failed} seconds {elapsed:.2} rate {:.0}/s client_cpu_s {:.2}",
        options.connections,
        done as f64 / elapsed,
        pbx_benches::cpu_seconds()
    );
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
