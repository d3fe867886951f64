//! Where a B-leg's requests go: the registered Contact's address, unless that looks like NAT.
//!
//! A phone registers a Contact (RFC 3261 §10.2.1) and pbx records where the REGISTER came from
//! (`Binding::source`). Most phones send from the address they name, and then both agree. When
//! they differ there are two readings:
//! - the phone is behind NAT: its Contact names an address pbx cannot reach (a private one, or a
//!   host name that resolves inside its network), and only the source reaches it, through the
//!   NAT's binding (RFC 5626 §3.3's "flow" idea, without its Outbound machinery);
//! - the REGISTER was sent on behalf of another device (a gateway, a provisioning service, a
//!   load generator such as SIPp): the Contact is the device, the source is not, and a request
//!   sent to the source gets no answer (every call 480).
//!
//! The rule, like Kamailio's `nat_uac_test` as far as a stored binding allows (it keeps the
//! source and the Contact, not the REGISTER's Via, so the "Via differs from source" test that
//! flags symmetric NAT behind a STUN-learned Contact cannot be made):
//! - TCP: always the source, the connection the phone opened (it is how the phone is reached).
//! - A Contact host that is not an IP literal (a name), a `maddr`, a `sips:` URI or a
//!   `transport=` other than the binding's: the source (pbx resolves no names on the call path).
//! - A Contact IP of another family, or of another address class than the source (loopback,
//!   private — RFC 1918, RFC 6598 shared, link-local, ULA — or public): NAT, the source. This is
//!   what catches the usual case, a phone at 192.168.x.y seen from a public address, and keeps a
//!   public phone from aiming pbx at loopback or the LAN.
//! - An address pbx never sends to (unspecified, multicast, broadcast, port 0): the source.
//! - Otherwise the Contact's IP and port (5060 when it names none).
//!
//! Pure logic: no clock, socket or name lookup.

use crate::sip::message::SipUri;
use crate::sip::message::Transport;
use ezk_sip_types::host::Host;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The port of a `sip:` URI that names none (RFC 3261 §19.1.2).
pub const SIP_PORT_DEFAULT: u16 = 5060;

/// How far an address reaches: two addresses of one class (and family) are taken to see each
/// other directly, so a Contact in the source's class is believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    /// RFC 1918, RFC 6598 (carrier-grade NAT), link-local (RFC 3927, fe80::/10), ULA (RFC 4193).
    Private,
    Public,
}

/// The class of a unicast address pbx may send to; `None` for one it never sends to.
pub fn address_class(ip: IpAddr) -> Option<AddressClass> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || a == 0 || a >= 240 {
        None
    } else if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)) {
        Some(AddressClass::Private)
    } else {
        Some(AddressClass::Public)
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<AddressClass> {
    let first = ip.segments()[0];
    if ip.is_unspecified() || ip.is_multicast() {
        None
    } else if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80 {
        Some(AddressClass::Private)
    } else {
        Some(AddressClass::Public)
    }
}

/// Where requests to a contact go: its own address when it is an IP literal that sees pbx as the
/// REGISTER's source does (see the module doc), else `source`.
pub fn destination(contact: &SipUri, source: SocketAddr, transport: Transport) -> SocketAddr {
    contact_address(contact, source, transport).unwrap_or(source)
}

fn contact_address(contact: &SipUri, source: SocketAddr, transport: Transport) -> Option<SocketAddr> {
    if transport != Transport::Udp || contact.sips || contact.uri_params.get("maddr").is_some() {
        return None;
    }
    if let Some(named) = contact.uri_params.get_val("transport")
        && !named.eq_ignore_ascii_case(transport.via_name())
    {
        return None;
    }
    let ip = match &contact.host_port.host {
        Host::IP4(v4) => IpAddr::V4(*v4),
        Host::IP6(v6) => IpAddr::V6(*v6),
        Host::Name(_) => return None,
    }
    .to_canonical();
    let port = contact.host_port.port.unwrap_or(SIP_PORT_DEFAULT);
    let from = source.ip().to_canonical();
    let same_family = ip.is_ipv4() == from.is_ipv4();
    let class = address_class(ip)?;
    (port != 0 && same_family && address_class(from) == Some(class)).then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_sip_uri;

    fn to(contact: &str, source: &str, transport: Transport) -> SocketAddr {
        let uri = parse_sip_uri(contact).unwrap_or_else(|| panic!("{contact} parses"));
        destination(&uri, source.parse().unwrap(), transport)
    }

    fn udp(contact: &str, source: &str) -> SocketAddr {
        to(contact, source, Transport::Udp)
    }

    /// A REGISTER sent on behalf of a device on another port or host of the same class reaches
    /// the device: the Contact wins.
    #[test]
    fn contact_of_the_same_class_is_believed() {
        assert_eq!(udp("sip:101@127.0.0.1:5070", "127.0.0.1:40000"), "127.0.0.1:5070".parse().unwrap());
        assert_eq!(udp("sip:101@192.168.1.20:5062", "192.168.1.9:5060"), "192.168.1.20:5062".parse().unwrap());
        assert_eq!(udp("sip:101@198.51.100.7;transport=udp", "203.0.113.9:5060"), "198.51.100.7:5060".parse().unwrap());
        assert_eq!(udp("sip:101@[2001:db8::7]:5080", "[2001:db8::1]:5060"), "[2001:db8::7]:5080".parse().unwrap());
        // The usual phone: Contact and source agree.
        assert_eq!(udp("sip:101@127.0.0.1:5064", "127.0.0.1:5064"), "127.0.0.1:5064".parse().unwrap());
    }

    /// NAT as `nat_uac_test` sees it from a binding: a Contact of another class or family than
    /// the source goes unbelieved, and so does one pbx never sends to.
    #[test]
    fn nat_and_unreachable_contacts_go_to_the_source() {
        let source = "203.0.113.9:34567";
        for contact in [
            "sip:101@192.168.1.20:5060",
            "sip:101@10.1.2.3",
            "sip:101@172.16.0.1:5060",
            "sip:101@100.64.0.1:5060",
            "sip:101@169.254.1.1:5060",
            "sip:101@127.0.0.1:5060",
            "sip:101@[fd00::1]:5060",
            "sip:101@[2001:db8::7]:5060",
            "sip:101@0.0.0.0:5060",
            "sip:101@224.0.0.1:5060",
            "sip:101@255.255.255.255:5060",
            "sip:101@198.51.100.7:0",
        ] {
            assert_eq!(udp(contact, source), source.parse().unwrap(), "{contact}");
        }
        // A public Contact from a private source (a phone that learned its public address by
        // STUN, seen by pbx on the LAN): the source too.
        assert_eq!(udp("sip:101@198.51.100.7:5060", "192.168.1.9:5060"), "192.168.1.9:5060".parse().unwrap());
        // A public phone cannot aim pbx at the loopback of pbx's host.
        assert_eq!(udp("sip:101@[::1]:5060", "[2001:db8::1]:5060"), "[2001:db8::1]:5060".parse().unwrap());
        // An IPv4-mapped source is its IPv4 address.
        assert_eq!(udp("sip:101@127.0.0.1:5070", "[::ffff:127.0.0.1]:40000"), "127.0.0.1:5070".parse().unwrap());
    }

    /// Names, maddr, sips, another transport and every TCP binding keep to the source.
    #[test]
    fn what_is_not_a_plain_udp_ip_contact_goes_to_the_source() {
        let source = "127.0.0.1:40000";
        for contact in [
            "sip:101@phone.example.com:5070",
            "sip:101@127.0.0.1:5070;maddr=127.0.0.2",
            "sips:101@127.0.0.1:5071",
            "sip:101@127.0.0.1:5070;transport=tcp",
        ] {
            assert_eq!(udp(contact, source), source.parse().unwrap(), "{contact}");
        }
        assert_eq!(to("sip:101@127.0.0.1:5070", source, Transport::Tcp), source.parse().unwrap());
    }
}
