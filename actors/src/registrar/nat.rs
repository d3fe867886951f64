//! Whether a registering phone is behind NAT: decided once, when its REGISTER arrives, from what
//! the REGISTER says (its top Via, each Contact) against where the packet came from, and kept on
//! the binding (`Binding::nat`) so a B-leg's INVITE knows where to go (`call::destination`).
//!
//! The rule is Kamailio's `nat_uac_test` with flags 1 + 2 + 16, plus its "reliable transport"
//! reading (issue 15, "Where a request goes"). NAT is detected when any of these holds:
//! - **Transport**: TCP (or TLS, when pbx speaks it). The phone opened the connection; reusing
//!   it is how it is reached (RFC 5626 §3.3's "flow", without its Outbound machinery).
//! - **Via** (flags 2 and 16): the top Via's sent-by — host, and its port, 5060 when it names
//!   none (RFC 3261 §18.2.1) — is not the packet's source address and port. A host name never
//!   matches. This is what catches a phone behind a symmetric NAT that learned a public address
//!   by STUN and names it in Via and Contact: the source is another port (or address) of the
//!   NAT, and only that source reaches the phone.
//! - **Contact** (flag 1, widened): a Contact IP of another family, or of another address class
//!   than the source (loopback; private — RFC 1918, RFC 6598, link-local, ULA; public), or one
//!   pbx never sends to. The usual case: a phone at 192.168.x.y seen from a public address.
//!
//! A Contact that merely names another host or port of the source's class is *not* NAT when
//! Via names the source: that is a REGISTER sent on behalf of another device (a gateway, a
//! provisioning service, SIPp load tests), and its calls must reach the Contact (else every call
//! is 480). Kamailio's flag 1 also ignores a public Contact.
//!
//! Bindings stored before the flag existed (`StoredBindingV::V1`, `EntryV::V1` in pbx-node) kept
//! no Via: [`nat_without_via`] applies the transport and Contact halves only, the rule those
//! bindings were routed by.
//!
//! Pure logic: no clock, socket or name lookup. What the flag then means for a destination, and
//! which Contacts are never used whatever it says (names, `maddr`, `sips:`), is
//! `call::destination`'s business.

use crate::sip::message::{SipUri, Transport, Via, parse_sip_uri};
use ezk_sip_types::host::{Host, HostPort};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The port of a `sip:` URI or a Via sent-by that names none (RFC 3261 §19.1.2, §18.2.1).
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

/// The IP a host names, if it is an IP literal (canonical: an IPv4-mapped IPv6 is its IPv4).
pub fn host_ip(host: &Host) -> Option<IpAddr> {
    match host {
        Host::IP4(v4) => Some(IpAddr::V4(*v4)),
        Host::IP6(v6) => Some(IpAddr::V6(*v6).to_canonical()),
        Host::Name(_) => None,
    }
}

/// Whether a Contact IP of this URI sits where `source` cannot be taken to see it directly:
/// another family, another address class, or an address pbx never sends to. A host name is
/// not evidence of NAT (and is never sent to: `call::destination`).
pub fn contact_across_nat(contact: &SipUri, source: SocketAddr) -> bool {
    let Some(ip) = host_ip(&contact.host_port.host) else { return false };
    let from = source.ip().to_canonical();
    ip.is_ipv4() != from.is_ipv4() || address_class(ip).is_none() || address_class(ip) != address_class(from)
}

/// Whether a Via sent-by (host and port, 5060 when absent) is not the packet's source.
pub fn sent_by_differs(sent_by: &HostPort, source: SocketAddr) -> bool {
    let same_ip = host_ip(&sent_by.host).is_some_and(|ip| ip == source.ip().to_canonical());
    !(same_ip && sent_by.port.unwrap_or(SIP_PORT_DEFAULT) == source.port())
}

/// The rule of the module doc, for one Contact of a REGISTER that came from `source` over
/// `transport` with `via` on top (none: nothing confirms the source, so NAT).
pub fn nat_detected(via: Option<&Via>, contact: &SipUri, source: SocketAddr, transport: Transport) -> bool {
    transport.is_reliable()
        || via.is_none_or(|via| sent_by_differs(&via.sent_by, source))
        || contact_across_nat(contact, source)
}

/// The rule for a binding stored without its REGISTER's Via (format V1): transport and Contact
/// only. A Contact that does not parse is never sent to; it counts as NAT (the source).
pub fn nat_without_via(contact: &str, source: SocketAddr, transport: Transport) -> bool {
    transport.is_reliable() || parse_sip_uri(contact).is_none_or(|uri| contact_across_nat(&uri, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_sip_uri;

    /// Parses `Via: SIP/2.0/UDP {sent_by};branch=z9hG4bKx` the way the parser reads a request.
    fn via(sent_by: &str) -> Via {
        use ezk_sip_types::header::HeaderParse;
        let text = format!("SIP/2.0/UDP {sent_by};branch=z9hG4bKx;rport");
        let bytes = bytes::Bytes::copy_from_slice(text.as_bytes());
        let text = std::str::from_utf8(&bytes).expect("ascii");
        Via::parse(&bytes, text).map(|(_, via)| via).unwrap_or_else(|e| panic!("{sent_by}: {e:?}"))
    }

    fn nat(sent_by: &str, contact: &str, source: &str, transport: Transport) -> bool {
        let uri = parse_sip_uri(contact).unwrap_or_else(|| panic!("{contact} parses"));
        nat_detected(Some(&via(sent_by)), &uri, source.parse().unwrap(), transport)
    }

    fn udp(sent_by: &str, contact: &str, source: &str) -> bool {
        nat(sent_by, contact, source, Transport::Udp)
    }

    /// The usual phone names itself in Via and Contact and sends from there: no NAT, on either
    /// family, with or without the default port written out.
    #[test]
    fn a_phone_that_names_its_source_is_not_behind_nat() {
        assert!(!udp("127.0.0.1:5064", "sip:101@127.0.0.1:5064", "127.0.0.1:5064"));
        assert!(!udp("192.168.1.20", "sip:101@192.168.1.20", "192.168.1.20:5060"));
        assert!(!udp("198.51.100.7:5062", "sip:101@198.51.100.7:5062", "198.51.100.7:5062"));
        assert!(!udp("[2001:db8::7]:5080", "sip:101@[2001:db8::7]:5080", "[2001:db8::7]:5080"));
        // A dual-stack socket reports an IPv4 source as IPv4-mapped: still the same address.
        assert!(!udp("127.0.0.1:5064", "sip:101@127.0.0.1:5064", "[::ffff:127.0.0.1]:5064"));
    }

    /// Symmetric NAT behind a STUN-learned address: Via and Contact name one public ip:port,
    /// the packet came from another port of the same host (or another host): NAT, by Via.
    #[test]
    fn via_naming_another_port_or_host_than_the_source_is_nat() {
        assert!(udp("198.51.100.7:5062", "sip:101@198.51.100.7:5062", "198.51.100.7:40000"));
        assert!(udp("198.51.100.7:5062", "sip:101@198.51.100.7:5062", "198.51.100.8:5062"));
        // No port in Via means 5060, not "any port".
        assert!(udp("198.51.100.7", "sip:101@198.51.100.7", "198.51.100.7:5062"));
        assert!(udp("127.0.0.2:5070", "sip:101@127.0.0.2:5070", "127.0.0.1:5070"));
        assert!(udp("[2001:db8::7]:5080", "sip:101@[2001:db8::7]:5080", "[2001:db8::7]:40000"));
        assert!(udp("[2001:db8::7]:5080", "sip:101@[2001:db8::7]:5080", "203.0.113.9:5080"));
        // A host name in Via never matches an address.
        assert!(udp("phone.example.com:5060", "sip:101@198.51.100.7", "198.51.100.7:5060"));
    }

    /// A phone on the LAN behind a NAT names its private address in Via and Contact; pbx sees
    /// the NAT's public one: NAT, by Via and by Contact.
    #[test]
    fn private_via_and_contact_from_a_public_source_is_nat() {
        assert!(udp("192.168.1.20:5060", "sip:101@192.168.1.20:5060", "203.0.113.9:34567"));
        // Even a Via that agrees with the source does not make a private Contact reachable.
        assert!(udp("203.0.113.9:34567", "sip:101@192.168.1.20:5060", "203.0.113.9:34567"));
        assert!(udp("[2001:db8::1]:5060", "sip:101@[fd00::1]:5060", "[2001:db8::1]:5060"));
        assert!(udp("[2001:db8::1]:5060", "sip:101@198.51.100.7:5060", "[2001:db8::1]:5060"));
        assert!(udp("203.0.113.9:5060", "sip:101@0.0.0.0:5060", "203.0.113.9:5060"));
    }

    /// A REGISTER on behalf of another device: Via names the source, the Contact another host or
    /// port of the same class. Not NAT, so calls go to the Contact.
    #[test]
    fn a_register_on_behalf_of_another_device_is_not_nat() {
        assert!(!udp("127.0.0.1:40000", "sip:101@127.0.0.1:5070", "127.0.0.1:40000"));
        assert!(!udp("192.168.1.9:5060", "sip:101@192.168.1.20:5062", "192.168.1.9:5060"));
        assert!(!udp("203.0.113.9:5060", "sip:101@198.51.100.7;transport=udp", "203.0.113.9:5060"));
        assert!(!udp("[2001:db8::1]:5060", "sip:101@[2001:db8::7]:5080", "[2001:db8::1]:5060"));
        // A name in the Contact is no sign of NAT (pbx never sends to it anyway).
        assert!(!udp("127.0.0.1:40000", "sip:101@phone.example.com", "127.0.0.1:40000"));
    }

    /// TCP is always NAT (the phone's connection is the way back), whatever Via and Contact say;
    /// and a REGISTER without a Via confirms nothing.
    #[test]
    fn tcp_and_a_missing_via_are_nat() {
        assert!(nat("127.0.0.1:40000", "sip:101@127.0.0.1:40000", "127.0.0.1:40000", Transport::Tcp));
        let uri = parse_sip_uri("sip:101@127.0.0.1:40000").unwrap();
        assert!(nat_detected(None, &uri, "127.0.0.1:40000".parse().unwrap(), Transport::Udp));
    }

    /// Bindings stored without the Via get the Contact half of the rule, as they were routed
    /// before: same class believed, another class or TCP or an unreadable Contact not.
    #[test]
    fn bindings_without_a_via_use_the_contact_rule() {
        let source: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert!(!nat_without_via("sip:101@127.0.0.1:5070", source, Transport::Udp));
        assert!(!nat_without_via("sip:101@phone.example.com", source, Transport::Udp));
        assert!(nat_without_via("sip:101@192.168.1.20:5060", source, Transport::Udp));
        assert!(nat_without_via("sip:101@127.0.0.1:5070", source, Transport::Tcp));
        assert!(nat_without_via("not a uri", source, Transport::Udp));
    }
}
