//! What a PBX and its proxy say to each other over their QUIC link.
//!
//! - One bidirectional stream, opened by the PBX, carries [`ToProxy`] and [`ToPbx`] frames:
//!   a 4-byte big-endian length, then the frame in postcard. Signalling is small and ordered,
//!   so one stream for all softphones is enough (QUIC keeps it apart from the media).
//! - Media rides QUIC datagrams (RFC 9221): [`DATAGRAM_HEADER`] bytes naming the channel and
//!   the component (RTP or RTCP), then the packet as the phone or the PBX sent it (SRTP stays
//!   SRTP: the proxy never holds media keys).
//!
//! A frame longer than [`FRAME_BYTES_MAX`] or one that does not decode ends the link: both
//! ends are pbx, so it is a bug or an attack, never something to repair.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The application protocol of the link (the cluster's links say `pbx-cluster/1`).
pub const ALPN: &[u8] = b"pbx-proxy/1";
/// The node name in the PBX's link certificate (`pbx proxy init`).
pub const PBX_NAME: &str = "pbx";
/// The node name in the proxy's link certificate.
pub const PROXY_NAME: &str = "proxy";
/// Longest frame: a SIP message (at most 64 KiB on a stream) with room for its envelope.
pub const FRAME_BYTES_MAX: usize = 96 * 1024;
/// Channel id (4 bytes, big-endian) and component (1 byte: 0 RTP, 1 RTCP).
pub const DATAGRAM_HEADER: usize = 5;

/// How a softphone reached the proxy.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowTransport {
    Tcp,
    Tls,
    /// A softphone's UDP address (`--sip-udp-listen`): one flow per address.
    Udp,
}

/// From the PBX to the proxy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToProxy {
    /// First frame: who the PBX is, how many softphones its licence lets through.
    Hello {
        serial: String,
        seats: u32,
    },
    /// A SIP message for the softphone of `flow`.
    Sip {
        flow: u64,
        bytes: Vec<u8>,
    },
    /// Close the softphone's connection (after what was sent before).
    CloseFlow {
        flow: u64,
    },
    /// Open (or update) the public media ports of `channel` for the phone of `flow`; `phone`
    /// is where its SDP says it receives (used until its first packet arrives).
    OpenChannel {
        channel: u32,
        flow: u64,
        phone: Option<SocketAddr>,
    },
    CloseChannel {
        channel: u32,
    },
    /// Debug mode for this PBX on for `days` (0: the proxy's default), or off.
    DebugMode {
        days: Option<u32>,
    },
    /// A softphone's configuration to be fetched once with `code`, then forgotten.
    Provision {
        code: String,
        document: String,
    },
    /// A data subject's request (GDPR Art. 15/20): everything held about user name `user`.
    Export {
        request: u64,
        user: String,
    },
    /// A data subject's request (Art. 17): delete everything held about `user`.
    Erase {
        request: u64,
        user: String,
    },
}

/// From the proxy to the PBX.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToPbx {
    /// The answer to Hello: the proxy serves this PBX from now on (until then, softphones
    /// connecting are turned away).
    Ready,
    /// A softphone connected: `peer` is its address as the proxy sees it.
    FlowOpened {
        flow: u64,
        transport: FlowTransport,
        peer: SocketAddr,
    },
    /// A complete SIP message from the softphone of `flow`.
    Sip {
        flow: u64,
        bytes: Vec<u8>,
    },
    FlowClosed {
        flow: u64,
    },
    /// The channel's public RTP address (RTCP on the next port).
    ChannelOpened {
        channel: u32,
        public: SocketAddr,
    },
    ChannelRefused {
        channel: u32,
    },
    /// Debug mode is on until this time (Unix seconds), or off.
    DebugModeSet {
        until_unix_s: Option<u64>,
    },
    /// The answer to [`ToProxy::Export`]: a JSON document.
    Exported {
        request: u64,
        document: String,
    },
    /// The answer to [`ToProxy::Erase`]: records deleted.
    Erased {
        request: u64,
        records: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("link stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("frame does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Writes one frame.
pub async fn write<W, T>(writer: &mut W, frame: &T) -> Result<(), FrameError>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    let bytes = postcard::to_stdvec(frame)?;
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLong(bytes.len()));
    }
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    writer.write_all(&out).await?;
    Ok(())
}

/// Reads one frame; `None` at the end of the stream.
pub async fn read<R, T>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncReadExt + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLong(len));
    }
    let mut bytes = vec![0u8; len];
    reader.read_exact(&mut bytes).await?;
    Ok(Some(postcard::from_bytes(&bytes)?))
}

/// A media datagram: header, then the packet.
pub fn datagram(channel: u32, rtcp: bool, packet: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(DATAGRAM_HEADER + packet.len());
    out.extend_from_slice(&channel.to_be_bytes());
    out.push(u8::from(rtcp));
    out.extend_from_slice(packet);
    out.into()
}

/// The channel, the component (true: RTCP) and the packet of a media datagram.
pub fn parse_datagram(bytes: &[u8]) -> Option<(u32, bool, &[u8])> {
    if bytes.len() <= DATAGRAM_HEADER || bytes[4] > 1 {
        return None;
    }
    let channel = u32::from_be_bytes(bytes[..4].try_into().ok()?);
    Some((channel, bytes[4] == 1, &bytes[DATAGRAM_HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let frame = ToPbx::Sip { flow: 7, bytes: b"REGISTER sip:pbx SIP/2.0\r\n\r\n".to_vec() };
        let mut buf = Vec::new();
        write(&mut buf, &frame).await.unwrap();
        let mut reader = &buf[..];
        assert_eq!(read::<_, ToPbx>(&mut reader).await.unwrap(), Some(frame));
        assert_eq!(read::<_, ToPbx>(&mut reader).await.unwrap(), None, "end of stream");

        let mut long = (FRAME_BYTES_MAX as u32 + 1).to_be_bytes().to_vec();
        long.extend_from_slice(&[0; 16]);
        assert!(matches!(read::<_, ToPbx>(&mut &long[..]).await, Err(FrameError::TooLong(_))));
        let garbage = [0, 0, 0, 2, 0xff, 0xff];
        assert!(matches!(read::<_, ToPbx>(&mut &garbage[..]).await, Err(FrameError::Decode(_))));
    }

    #[test]
    fn datagrams_name_channel_and_component() {
        let d = datagram(0x0102_0304, true, b"\x80\xc8rest");
        assert_eq!(parse_datagram(&d), Some((0x0102_0304, true, &b"\x80\xc8rest"[..])));
        assert_eq!(parse_datagram(&d[..5]), None, "no packet");
        assert_eq!(parse_datagram(&[0, 0, 0, 1, 2, 9]), None, "no such component");
    }
}
