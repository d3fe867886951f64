//! The proxy's media channels: for each audio stream of a softphone's call, a public UDP pair
//! (RTP on an even port, RTCP on the next) that the phone sends to, relayed to and from the
//! PBX as QUIC datagrams on its link.
//!
//! Toward the phone, packets go to the source the phone's packets come from (symmetric RTP:
//! the phone is behind NAT), before its first packet to the address its SDP gave. Only the
//! phone's own IP (the address its SIP connection comes from) is learned: a stranger who finds
//! a channel's port cannot divert its media, and what they send is dropped and counted
//! (`pbx_proxy_media_dropped_total{reason="stranger"}`). Packets are relayed as they are: SRTP
//! stays encrypted end to end between the phone and the PBX.
//!
//! Bounds: at most [`CHANNELS_MAX`] channels; a channel lives while the PBX keeps it (closed
//! with its call's stand-in on the PBX, its softphone's connection, or the link).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Media channels open at once (two sockets each).
pub const CHANNELS_MAX: usize = 4_096;
/// Largest packet relayed (QUIC datagrams on the link carry about 1,200 bytes; audio is far
/// smaller).
const PACKET_BYTES_MAX: usize = 1_500;

struct Channel {
    link: u64,
    flow: u64,
    sockets: [Arc<UdpSocket>; 2],
    /// Where RTP and RTCP toward the phone go.
    target: Arc<Mutex<[Option<SocketAddr>; 2]>>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Channel {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every open channel, by the id the PBX gave it.
pub struct Channels {
    bind: IpAddr,
    advertised: IpAddr,
    open: Mutex<HashMap<u32, Channel>>,
}

impl Channels {
    /// Sockets bound on `bind`; the address given to the PBX (for the phones' SDP) is
    /// `advertised`.
    pub fn new(bind: IpAddr, advertised: IpAddr) -> Channels {
        Channels { bind, advertised, open: Mutex::new(HashMap::new()) }
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("channels lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens channel `id` (or updates the phone's SDP address of an open one) and returns its
    /// public RTP address.
    pub async fn open(
        &self,
        link: u64,
        id: u32,
        flow: u64,
        phone_ip: IpAddr,
        phone: Option<SocketAddr>,
        connection: quinn::Connection,
    ) -> std::io::Result<SocketAddr> {
        {
            let open = self.open.lock().expect("channels lock");
            if let Some(channel) = open.get(&id).filter(|c| c.link == link && c.flow == flow) {
                if let Some(phone) = phone {
                    let mut target = channel.target.lock().expect("target lock");
                    // A learned source wins; the SDP address fills what is not learned yet.
                    target[0].get_or_insert(phone);
                    target[1].get_or_insert(SocketAddr::new(phone.ip(), phone.port().saturating_add(1)));
                }
                return Ok(SocketAddr::new(self.advertised, channel.sockets[0].local_addr()?.port()));
            }
            if open.len() >= CHANNELS_MAX {
                metrics::counter!("pbx_proxy_channels_refused_total").increment(1);
                return Err(std::io::Error::other("too many media channels"));
            }
        }
        let [rtp, rtcp] = bind_pair(self.bind)?;
        let port = rtp.local_addr()?.port();
        let target = Arc::new(Mutex::new([phone, phone.map(|p| SocketAddr::new(p.ip(), p.port().saturating_add(1)))]));
        let (rtp, rtcp) = (Arc::new(rtp), Arc::new(rtcp));
        let tasks = [
            tokio::spawn(from_phone(rtp.clone(), id, false, phone_ip, target.clone(), connection.clone())),
            tokio::spawn(from_phone(rtcp.clone(), id, true, phone_ip, target.clone(), connection)),
        ];
        let channel = Channel { link, flow, sockets: [rtp, rtcp], target, tasks };
        self.open.lock().expect("channels lock").insert(id, channel);
        metrics::gauge!("pbx_proxy_channels").set(self.len() as f64);
        Ok(SocketAddr::new(self.advertised, port))
    }

    pub fn close(&self, link: u64, id: u32) {
        let mut open = self.open.lock().expect("channels lock");
        if open.get(&id).is_some_and(|c| c.link == link) {
            open.remove(&id);
        }
        metrics::gauge!("pbx_proxy_channels").set(open.len() as f64);
    }

    pub fn close_flow(&self, link: u64, flow: u64) {
        let mut open = self.open.lock().expect("channels lock");
        open.retain(|_, c| !(c.link == link && c.flow == flow));
        metrics::gauge!("pbx_proxy_channels").set(open.len() as f64);
    }

    pub fn close_link(&self, link: u64) {
        let mut open = self.open.lock().expect("channels lock");
        open.retain(|_, c| c.link != link);
        metrics::gauge!("pbx_proxy_channels").set(open.len() as f64);
    }

    /// A packet from the PBX for the phone of channel `id`.
    fn to_phone(&self, link: u64, id: u32, rtcp: bool, packet: &[u8]) {
        let open = self.open.lock().expect("channels lock");
        let Some(channel) = open.get(&id).filter(|c| c.link == link) else {
            metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "no_channel").increment(1);
            return;
        };
        let component = usize::from(rtcp);
        let target = channel.target.lock().expect("target lock")[component];
        match target {
            Some(target) => {
                let _ = channel.sockets[component].try_send_to(packet, target);
            }
            None => metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "no_target").increment(1),
        }
    }
}

/// An RTP socket on an even port and its RTCP socket on the next one (the proxy's channels and
/// the PBX's stand-ins alike); within a tokio runtime.
pub fn bind_pair(ip: IpAddr) -> std::io::Result<[UdpSocket; 2]> {
    let bind = |port| -> std::io::Result<UdpSocket> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        socket.set_nonblocking(true)?;
        UdpSocket::from_std(socket)
    };
    for _ in 0..64 {
        let rtp = bind(0)?;
        let port = rtp.local_addr()?.port();
        if port % 2 == 0
            && port < u16::MAX
            && let Ok(rtcp) = bind(port + 1)
        {
            return Ok([rtp, rtcp]);
        }
    }
    Err(std::io::Error::other("no even/odd UDP port pair free"))
}

/// Reads what the phone sends on one socket of a channel and relays it to the PBX.
async fn from_phone(
    socket: Arc<UdpSocket>,
    id: u32,
    rtcp: bool,
    phone_ip: IpAddr,
    target: Arc<Mutex<[Option<SocketAddr>; 2]>>,
    connection: quinn::Connection,
) {
    let mut buf = vec![0u8; PACKET_BYTES_MAX];
    let component = usize::from(rtcp);
    loop {
        let Ok((len, source)) = socket.recv_from(&mut buf).await else { return };
        if source.ip() != phone_ip {
            metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "stranger").increment(1);
            continue;
        }
        {
            let mut target = target.lock().expect("target lock");
            target[component] = Some(source);
        }
        if connection.send_datagram(crate::wire::datagram(id, rtcp, &buf[..len])).is_err() {
            metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "link").increment(1);
        }
    }
}

/// Reads the PBX's media datagrams on its link and sends each to its phone.
pub async fn from_pbx(connection: quinn::Connection, link: u64, channels: Arc<Channels>) {
    while let Ok(datagram) = connection.read_datagram().await {
        match crate::wire::parse_datagram(&datagram) {
            Some((id, rtcp, packet)) => channels.to_phone(link, id, rtcp, packet),
            None => metrics::counter!("pbx_proxy_media_dropped_total", "reason" => "malformed").increment(1),
        }
    }
}
