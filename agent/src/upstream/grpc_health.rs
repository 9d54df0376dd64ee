//! The gRPC health checking protocol's messages (`grpc.health.v1`), encoded and decoded by
//! hand: a `HealthCheckRequest` with a service name, and the status of a
//! `HealthCheckResponse`.

use bytes::Bytes;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
pub(super) const SERVING: u64 = 1;

/// A length-prefixed gRPC message: `HealthCheckRequest { service: name }`.
pub(super) fn grpc_check_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0); // not compressed
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&x, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of the first gRPC message of `body` (a `HealthCheckResponse`; a missing
/// field is 0, UNKNOWN); `None` when the body is not one uncompressed message.
pub(super) fn grpc_serving_status(body: &[u8]) -> Option<u64> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let tag = get_varint(&mut msg)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = get_varint(&mut msg)?,
            (_, 0) => {
                get_varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..)?,
            (_, 2) => {
                let n = get_varint(&mut msg)? as usize;
                msg = msg.get(n..)?;
            }
            (_, 5) => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages_are_encoded_and_decoded() {
        assert_eq!(&grpc_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_check_request("svc")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        // status SERVING, with an unknown field before it.
        assert_eq!(
            grpc_serving_status(&[0, 0, 0, 0, 5, 0x10, 0x96, 0x01, 0x08, 1]),
            Some(1)
        );
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), Some(0), "UNKNOWN");
        assert_eq!(grpc_serving_status(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 9, 0x08]), None, "short");
        assert_eq!(
            grpc_serving_status(&[0, 0, 0, 0, 1, 0x08]),
            None,
            "cut varint"
        );
        assert_eq!(grpc_serving_status(&[]), None);
    }
}
