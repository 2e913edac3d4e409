//! Byte-range math for blob reads (`Range`) and chunked uploads (`Content-Range`). Pure.

/// An inclusive byte range within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn length(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// What a `Range` request header asks of a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: serve the whole blob (RFC 9110 lets servers ignore
    /// malformed or multi-range headers).
    Whole,
    Partial(ByteRange),
    /// Syntactically fine but outside the blob: 416.
    Unsatisfiable,
}

/// Interprets `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` against a blob size.
pub fn parse_range(header: &str, size: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }),
            None => RangeRequest::Whole,
        },
        (false, _) => {
            let Some(start) = number(first) else {
                return RangeRequest::Whole;
            };
            let end = if last.trim().is_empty() {
                Some(u64::MAX)
            } else {
                number(last)
            };
            match end {
                None => RangeRequest::Whole,
                Some(end) if end < start => RangeRequest::Whole,
                Some(_) if start >= size => RangeRequest::Unsatisfiable,
                Some(end) => RangeRequest::Partial(ByteRange {
                    start,
                    end: end.min(size - 1),
                }),
            }
        }
        (true, true) => RangeRequest::Whole,
    }
}

/// Parses an upload chunk's `Content-Range`: `a-b`, as the distribution spec writes it,
/// or the RFC forms `bytes a-b/*` and `bytes=a-b` that some clients send.
pub fn parse_content_range(header: &str) -> Option<ByteRange> {
    let s = header.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next()?;
    let (a, b) = s.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end: u64 = b.trim().parse().ok()?;
    // `end` is a byte offset: u64::MAX would make the length 2^64, which wraps.
    (end >= start && end < u64::MAX).then_some(ByteRange { start, end })
}

/// Parses a 206 response's `Content-Range: bytes a-b/total` (total may be `*`):
/// the range and the whole size, as an upstream reports them when a blob resumes.
pub fn parse_response_content_range(header: &str) -> Option<(ByteRange, Option<u64>)> {
    let rest = header.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let range = parse_content_range(range)?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    match total {
        Some(t) if range.end >= t => None,
        _ => Some((range, total)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn response_content_ranges() {
        assert_eq!(
            parse_response_content_range("bytes 100-199/200"),
            Some((
                ByteRange {
                    start: 100,
                    end: 199
                },
                Some(200)
            ))
        );
        assert_eq!(
            parse_response_content_range("bytes 5-9/*"),
            Some((ByteRange { start: 5, end: 9 }, None))
        );
        assert_eq!(parse_response_content_range("bytes 0-200/200"), None);
        assert_eq!(parse_response_content_range("bytes */200"), None);
        assert_eq!(parse_response_content_range("0-1/2"), None);
    }

    #[test]
    fn range_forms() {
        assert_eq!(parse_range("bytes=0-9", 100), partial(0, 9));
        assert_eq!(parse_range("bytes=10-", 100), partial(10, 99));
        assert_eq!(parse_range("bytes=-5", 100), partial(95, 99));
        assert_eq!(parse_range("bytes=-500", 100), partial(0, 99));
        assert_eq!(parse_range("bytes=90-1000", 100), partial(90, 99));
        assert_eq!(parse_range("bytes=99-99", 100), partial(99, 99));
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(
            parse_range("bytes=100-200", 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeRequest::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Whole);
        assert_eq!(parse_range("bytes=x-y", 100), RangeRequest::Whole);
    }

    #[test]
    fn multi_gigabyte_offsets() {
        let size = 5u64 << 30;
        assert_eq!(
            parse_range("bytes=4294967296-", size),
            partial(1 << 32, size - 1)
        );
    }

    #[test]
    fn content_range_forms() {
        let r = Some(ByteRange { start: 0, end: 99 });
        assert_eq!(parse_content_range("0-99"), r);
        assert_eq!(parse_content_range("bytes 0-99/*"), r);
        assert_eq!(parse_content_range("bytes=0-99"), r);
        assert_eq!(parse_content_range("99-0"), None);
        assert_eq!(parse_content_range("abc"), None);
        assert_eq!(parse_content_range("0-18446744073709551615"), None);
        assert_eq!(parse_content_range("0-18446744073709551616"), None);
        assert_eq!(
            parse_content_range("0-18446744073709551614").map(|r| r.length()),
            Some(u64::MAX)
        );
        assert_eq!(parse_content_range("-5"), None);
        assert_eq!(parse_content_range("5-"), None);
        assert_eq!(ByteRange { start: 10, end: 19 }.length(), 10);
    }
}
