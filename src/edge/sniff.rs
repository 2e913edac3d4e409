//! What a new connection speaks, from its first bytes. Pure: no I/O.
//!
//! The plain port must tell three kinds of client apart before any HTTP parsing:
//! a TLS ClientHello (containers/image and dockerd try `https://` first), the HTTP/2
//! prior-knowledge preface (h2c), and HTTP/1.x. Deciding from as few bytes as
//! possible matters: a client that sent a ClientHello waits for our answer and sends
//! nothing more, so waiting for "enough" bytes would cost it a timeout.

/// The client's first bytes on an HTTP/2 prior-knowledge connection (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// TLS record type of a handshake message, the first byte of a ClientHello record.
const TLS_HANDSHAKE: u8 = 0x16;
/// The record's major version, the second byte: 3 from SSL 3.0 up to TLS 1.3.
const TLS_MAJOR_VERSION: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// Too few bytes to decide yet.
    NeedMore,
    /// A TLS handshake record (a ClientHello), told from its first two bytes.
    Tls,
    /// The complete HTTP/2 preface.
    H2Preface,
    /// Anything else: HTTP/1.x, or garbage for the HTTP/1 parser to refuse.
    Http1,
}

/// Classifies the first bytes of a connection.
pub fn classify(bytes: &[u8]) -> FirstBytes {
    match bytes.first() {
        None => FirstBytes::NeedMore,
        Some(&TLS_HANDSHAKE) => match bytes.get(1) {
            None => FirstBytes::NeedMore,
            Some(&TLS_MAJOR_VERSION) => FirstBytes::Tls,
            Some(_) => FirstBytes::Http1,
        },
        Some(_) => {
            let n = bytes.len().min(H2_PREFACE.len());
            if bytes[..n] != H2_PREFACE[..n] {
                FirstBytes::Http1
            } else if n == H2_PREFACE.len() {
                FirstBytes::H2Preface
            } else {
                FirstBytes::NeedMore
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_client_hello_is_recognised_from_its_record_header() {
        assert_eq!(classify(&[0x16]), FirstBytes::NeedMore);
        assert_eq!(classify(&[0x16, 0x03]), FirstBytes::Tls);
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            FirstBytes::Tls
        );
        assert_eq!(classify(&[0x16, 0x02]), FirstBytes::Http1);
        assert_eq!(classify(&[0x16, 0x09, 0x01, 0x00, 0x10]), FirstBytes::Http1);
    }

    #[test]
    fn h2_preface_needs_all_of_it() {
        assert_eq!(classify(b""), FirstBytes::NeedMore);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), FirstBytes::NeedMore);
        assert_eq!(classify(H2_PREFACE), FirstBytes::H2Preface);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(classify(&more), FirstBytes::H2Preface);
    }

    #[test]
    fn anything_else_is_http1_as_soon_as_it_differs() {
        // Shorter than the preface: decided without waiting for 24 bytes.
        assert_eq!(classify(b"G"), FirstBytes::Http1);
        assert_eq!(classify(b"GET /v2/ HTTP/1.0\r\n\r\n"), FirstBytes::Http1);
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), FirstBytes::Http1);
        assert_eq!(classify(b"\x00\x01"), FirstBytes::Http1);
    }
}
