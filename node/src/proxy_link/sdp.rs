//! The SDP of messages that cross the softphone proxy: which audio streams it declares, and the
//! same message with their addresses replaced (toward the PBX: the stand-in sockets here;
//! toward the phone: the proxy's public ports). Text in, text out: everything but the audio
//! addresses (codecs, `a=crypto`, directions) passes unchanged.
//!
//! A stream other than audio gets port 0 (refused: the proxy relays audio only), and ICE lines
//! are dropped (the proxy is the only path: candidates would name addresses nobody can reach).

use std::net::{IpAddr, SocketAddr};

/// One audio stream of an SDP: its index among the m= lines and where it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Audio {
    pub index: usize,
    pub rtp: SocketAddr,
    pub rtcp: SocketAddr,
}

/// Where a replaced audio stream receives now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replacement {
    pub rtp: SocketAddr,
    pub rtcp_port: u16,
}

const ICE: [&str; 6] =
    ["a=candidate:", "a=ice-ufrag:", "a=ice-pwd:", "a=ice-options:", "a=end-of-candidates", "a=remote-candidates:"];

/// Head and body of a message, if it carries SDP.
fn split(message: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(message).ok()?;
    let at = text.find("\r\n\r\n")?;
    let (head, body) = (&text[..at + 2], &text[at + 4..]);
    let sdp = head.split("\r\n").any(|line| {
        let Some((name, value)) = line.split_once(':') else { return false };
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-type") || name == "c")
            && value.trim().to_ascii_lowercase().starts_with("application/sdp")
    });
    (sdp && !body.is_empty()).then_some((head, body))
}

/// The value of the first header named `long` or `short` (compact form).
pub fn header<'a>(message: &'a [u8], long: &str, short: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(message).ok()?;
    let head = &text[..text.find("\r\n\r\n")?];
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)).then(|| value.trim())
    })
}

fn connection_ip(line: &str) -> Option<IpAddr> {
    // c=IN IP4 192.0.2.1[/ttl]
    let address = line.strip_prefix("c=")?.split_whitespace().nth(2)?;
    address.split('/').next()?.parse().ok()
}

/// The audio streams of the message's SDP (none without SDP; port-0 streams left out).
pub fn audio(message: &[u8]) -> Vec<Audio> {
    let Some((_, body)) = split(message) else { return Vec::new() };
    let mut session_ip = None;
    let mut found = Vec::new();
    // (index, port, media-level ip, a=rtcp) of the m= section being read.
    let mut current: Option<(usize, u16, Option<IpAddr>, Option<SocketAddr>)> = None;
    let mut index = 0;
    let mut finish = |current: Option<(usize, u16, Option<IpAddr>, Option<SocketAddr>)>, session: Option<IpAddr>| {
        if let Some((i, port, ip, rtcp)) = current
            && let Some(ip) = ip.or(session)
        {
            let rtp = SocketAddr::new(ip, port);
            found.push(Audio { index: i, rtp, rtcp: rtcp.unwrap_or(SocketAddr::new(ip, port.saturating_add(1))) });
        }
    };
    for line in body.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            finish(current.take(), session_ip);
            let mut fields = media.split_whitespace();
            let kind = fields.next().unwrap_or("");
            let port: u16 = fields.next().and_then(|p| p.split('/').next()?.parse().ok()).unwrap_or(0);
            if kind == "audio" && port != 0 {
                current = Some((index, port, None, None));
            }
            index += 1;
        } else if line.starts_with("c=") {
            match &mut current {
                Some((_, _, ip, _)) => *ip = connection_ip(line),
                None if index == 0 => session_ip = connection_ip(line),
                None => {}
            }
        } else if let Some(rtcp) = line.strip_prefix("a=rtcp:")
            && let Some((_, port, ip, slot)) = &mut current
        {
            let mut fields = rtcp.split_whitespace();
            let rtcp_port = fields.next().and_then(|p| p.parse().ok());
            let rtcp_ip = fields.nth(2).and_then(|a| a.parse().ok()).or(*ip).or(session_ip);
            if let (Some(p), Some(i)) = (rtcp_port, rtcp_ip) {
                *slot = Some(SocketAddr::new(i, p));
            }
            let _ = port;
        }
    }
    finish(current.take(), session_ip);
    found
}

/// The message with each audio stream in `replace` (by m= index) moved to its new address,
/// other streams refused (port 0), ICE lines dropped and Content-Length set anew. Unchanged
/// when the message carries no SDP.
pub fn rewrite(message: &[u8], replace: &[(usize, Replacement)]) -> Vec<u8> {
    let Some((head, body)) = split(message) else { return message.to_vec() };
    let family = |ip: IpAddr| if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut out_body = String::with_capacity(body.len() + 64);
    let mut index = 0;
    let mut in_media: Option<Option<Replacement>> = None;
    let first_ip = replace.first().map(|(_, r)| r.rtp.ip());
    for line in body.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            let mut fields: Vec<&str> = media.split_whitespace().collect();
            let replacement = replace.iter().find(|(i, _)| *i == index).map(|(_, r)| *r);
            index += 1;
            let port = match replacement {
                Some(r) => r.rtp.port().to_string(),
                None => "0".to_string(),
            };
            if fields.len() >= 2 {
                fields[1] = &port;
            }
            out_body.push_str("m=");
            out_body.push_str(&fields.join(" "));
            out_body.push_str("\r\n");
            if let Some(r) = replacement {
                let ip = r.rtp.ip();
                out_body.push_str(&format!("c=IN {} {ip}\r\n", family(ip)));
                out_body.push_str(&format!("a=rtcp:{} IN {} {ip}\r\n", r.rtcp_port, family(ip)));
            }
            in_media = Some(replacement);
            continue;
        }
        if ICE.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        match in_media {
            // Session level: the connection line names the first replaced stream's address.
            None if line.starts_with("c=") => match first_ip {
                Some(ip) => out_body.push_str(&format!("c=IN {} {ip}\r\n", family(ip))),
                None => {
                    out_body.push_str(line);
                    out_body.push_str("\r\n");
                }
            },
            None if line.starts_with("o=") => {
                // The origin's address says where the session comes from: the same rewrite.
                match (first_ip, line.rsplitn(3, ' ').collect::<Vec<_>>().as_slice()) {
                    (Some(ip), [_, _, rest]) => out_body.push_str(&format!("{rest} {} {ip}\r\n", family(ip))),
                    _ => {
                        out_body.push_str(line);
                        out_body.push_str("\r\n");
                    }
                }
            }
            // Inside a replaced stream: its own c= and a=rtcp were written with the m= line.
            Some(Some(_)) if line.starts_with("c=") || line.starts_with("a=rtcp:") => {}
            _ => {
                out_body.push_str(line);
                out_body.push_str("\r\n");
            }
        }
    }
    let mut out = String::with_capacity(head.len() + out_body.len() + 8);
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let is_length = line.split_once(':').is_some_and(|(name, _)| {
            let name = name.trim();
            name.eq_ignore_ascii_case("content-length") || name == "l"
        });
        if is_length {
            out.push_str(&format!("Content-Length: {}", out_body.len()));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&out_body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(sdp: &str) -> Vec<u8> {
        format!(
            "INVITE sip:201@pbx SIP/2.0\r\nCall-ID: abc@phone\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY\r\na=candidate:1 1 UDP 1 10.0.0.5 4000 typ host\r\nm=video 5000 RTP/AVP 96\r\nm=audio 6000 RTP/AVP 8\r\nc=IN IP4 10.0.0.6\r\na=rtcp:6003\r\n";

    #[test]
    fn audio_streams_with_their_addresses() {
        let found = audio(&invite(OFFER));
        assert_eq!(
            found,
            vec![
                Audio { index: 0, rtp: "10.0.0.5:4000".parse().unwrap(), rtcp: "10.0.0.5:4001".parse().unwrap() },
                Audio { index: 2, rtp: "10.0.0.6:6000".parse().unwrap(), rtcp: "10.0.0.6:6003".parse().unwrap() },
            ]
        );
        assert_eq!(header(&invite(OFFER), "call-id", "i"), Some("abc@phone"));
        assert!(audio(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n").is_empty());
    }

    #[test]
    fn rewriting_moves_audio_refuses_video_keeps_keys_and_fixes_the_length() {
        let r = |rtp: &str, rtcp_port| Replacement { rtp: rtp.parse().unwrap(), rtcp_port };
        let out = rewrite(&invite(OFFER), &[(0, r("198.51.100.1:30000", 30001)), (2, r("198.51.100.1:30002", 30003))]);
        let text = String::from_utf8(out.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(body.contains("o=- 1 1 IN IP4 198.51.100.1\r\n"), "{body}");
        assert!(body.contains("c=IN IP4 198.51.100.1\r\nt=0 0"), "{body}");
        assert!(
            body.contains(
                "m=audio 30000 RTP/SAVP 0 101\r\nc=IN IP4 198.51.100.1\r\na=rtcp:30001 IN IP4 198.51.100.1\r\n"
            )
        );
        assert!(body.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY"), "keys pass unchanged");
        assert!(!body.contains("candidate") && !body.contains("10.0.0."), "{body}");
        assert!(body.contains("m=video 0 RTP/AVP 96"), "{body}");
        assert_eq!(
            audio(&out),
            vec![
                Audio {
                    index: 0,
                    rtp: "198.51.100.1:30000".parse().unwrap(),
                    rtcp: "198.51.100.1:30001".parse().unwrap()
                },
                Audio {
                    index: 2,
                    rtp: "198.51.100.1:30002".parse().unwrap(),
                    rtcp: "198.51.100.1:30003".parse().unwrap()
                },
            ],
            "what the rewrite wrote reads back"
        );
        let plain = b"BYE sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(rewrite(plain, &[]), plain.to_vec());
    }
}
