//! Capture rules: which destinations are captured, written into the LPM tries; 4-tuples and
//! original destinations as the maps hold them.

use super::*;

pub(super) fn v4_bytes(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

pub(super) fn tuple(peer: SocketAddr, local: SocketAddr) -> Option<Tuple> {
    let mut t = Tuple {
        src_port: peer.port().to_be_bytes(),
        dst_port: local.port().to_be_bytes(),
        ..Tuple::default()
    };
    match (peer.ip(), local.ip()) {
        (IpAddr::V4(p), IpAddr::V4(l)) => {
            t.family = AF_INET;
            t.src_addr[..4].copy_from_slice(&p.octets());
            t.dst_addr[..4].copy_from_slice(&l.octets());
        }
        (IpAddr::V6(p), IpAddr::V6(l)) => {
            t.family = AF_INET6;
            t.src_addr = p.octets();
            t.dst_addr = l.octets();
        }
        _ => return None,
    }
    Some(t)
}

pub(super) fn orig_to_addr(o: &OrigDst) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(o.port);
    match o.family {
        AF_INET => Some(SocketAddr::from((
            [o.addr[0], o.addr[1], o.addr[2], o.addr[3]],
            port,
        ))),
        AF_INET6 => Some(SocketAddr::from((Ipv6Addr::from(o.addr), port))),
        _ => None,
    }
}

/// Capture rules: every `bind_to_port: false` listener's exact address, then the extra rules.
pub fn capture_rules(cfg: &RedirectConfig, listeners: &[Arc<Listener>]) -> Vec<CaptureRule> {
    let mut rules: Vec<CaptureRule> = listeners
        .iter()
        .filter(|l| !l.bind_to_port)
        .map(|l| CaptureRule {
            net: l.address.ip(),
            prefix_len: if l.address.is_ipv4() { 32 } else { 128 },
            ports: vec![l.address.port()],
            exclude: false,
        })
        .collect();
    rules.extend(cfg.capture.iter().cloned());
    rules
}

pub(super) type CaptureMaps = (
    LpmTrie<MapData, CaptureV4, RawRule>,
    LpmTrie<MapData, CaptureV6, RawRule>,
);

/// Makes the capture tries hold exactly `rules`: new and changed entries are written before
/// stale ones are removed, so a destination that stays captured is never briefly uncaptured.
pub(super) fn write_rules(
    v4: &mut LpmTrie<MapData, CaptureV4, RawRule>,
    v6: &mut LpmTrie<MapData, CaptureV6, RawRule>,
    rules: &[CaptureRule],
) -> Result<(), RedirectError> {
    let mut want4 = Vec::new();
    let mut want6 = Vec::new();
    for r in rules {
        let action = RawRule {
            action: if r.exclude {
                ACTION_EXCLUDE
            } else {
                ACTION_REDIRECT
            },
        };
        let ports: Vec<u16> = if r.ports.is_empty() {
            vec![0]
        } else {
            r.ports.clone()
        };
        for port in ports {
            let port = port.to_be_bytes();
            match r.net {
                IpAddr::V4(ip) => {
                    let mut addr = ip.octets();
                    mask(&mut addr, r.prefix_len);
                    want4.push((16 + r.prefix_len as u32, CaptureV4 { port, addr }, action));
                }
                IpAddr::V6(ip) => {
                    let mut addr = ip.octets();
                    mask(&mut addr, r.prefix_len);
                    want6.push((16 + r.prefix_len as u32, CaptureV6 { port, addr }, action));
                }
            }
        }
    }
    sync_trie(v4, &want4)?;
    sync_trie(v6, &want6)?;
    Ok(())
}

/// Writes every wanted entry, then removes the entries not wanted.
pub(super) fn sync_trie<K: aya::Pod + PartialEq>(
    trie: &mut LpmTrie<MapData, K, RawRule>,
    want: &[(u32, K, RawRule)],
) -> Result<(), RedirectError> {
    for (len, data, action) in want {
        trie.insert(&Key::new(*len, *data), *action, 0)
            .map_err(setup("insert capture rule"))?;
    }
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            !want
                .iter()
                .any(|(l, d, _)| *l == k.prefix_len() && *d == k.data())
        })
        .collect();
    for k in stale {
        let _ = trie.remove(&k);
    }
    Ok(())
}

pub(super) fn mask(addr: &mut [u8], prefix_len: u8) {
    for (i, b) in addr.iter_mut().enumerate() {
        let bits = (prefix_len as usize).saturating_sub(i * 8).min(8);
        *b &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
}
