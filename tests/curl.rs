//! Edge cases driven with curl, the tool operators reach for first: a chunked upload
//! with an out-of-order chunk, upload status, Range reads and deletes, checked on the
//! raw status lines, headers and bytes curl reports.

// Each test file uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use common::{run_ok, sha256_digest, Server};
use std::process::Command;
use std::time::Duration;

const CURL_TIMEOUT: Duration = Duration::from_secs(30);

/// One curl exchange: status code, headers (lowercased names) and body.
struct Exchange {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Exchange {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl with `args` against `url`, sending `body` (if any) as the request body.
fn curl(url: &str, args: &[&str], body: Option<&[u8]>) -> Exchange {
    let dir = tempfile::tempdir().expect("tempdir");
    let (head_path, body_path) = (dir.path().join("head"), dir.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--noproxy", "*", "-D"])
        .arg(&head_path)
        .arg("-o")
        .arg(&body_path)
        .args(args);
    if let Some(bytes) = body {
        let upload = dir.path().join("upload");
        std::fs::write(&upload, bytes).expect("write upload body");
        cmd.arg("--data-binary")
            .arg(format!("@{}", upload.display()));
    }
    run_ok(cmd.arg(url), CURL_TIMEOUT);
    let head = std::fs::read_to_string(&head_path).expect("curl wrote headers");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = std::fs::read(&body_path).unwrap_or_default();
    Exchange {
        status,
        headers,
        body,
    }
}

fn error_code(exchange: &Exchange) -> String {
    let v: serde_json::Value = serde_json::from_slice(&exchange.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", exchange.body));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn chunked_upload_with_out_of_order_chunk_then_range_reads_and_delete() {
    let server = Server::start();
    let base = server.base_url();
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256_digest(&data);

    let started = curl(
        &format!("{base}/v2/curl/app/blobs/uploads/"),
        &["-X", "POST"],
        None,
    );
    assert_eq!(started.status, 202);
    let location = started.header("location").expect("Location").to_string();
    let session = format!("{base}{location}");

    let chunk = |range: &str, bytes: &[u8]| {
        let content_range = format!("Content-Range: {range}");
        let args = [
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            content_range.as_str(),
        ];
        curl(&session, &args, Some(bytes))
    };
    let first = chunk("0-999", &data[..1000]);
    assert_eq!(first.status, 202);
    assert_eq!(first.header("range"), Some("0-999"));

    // Skipping bytes 1000-1999 is refused with the range the client must resume from.
    let gap = chunk("2000-2999", &data[2000..]);
    assert_eq!(gap.status, 416);
    assert_eq!(gap.header("range"), Some("0-999"));
    assert_eq!(error_code(&gap), "RANGE_INVALID");

    // Overlapping what is stored is refused the same way.
    let overlap = chunk("500-1499", &data[500..1500]);
    assert_eq!(overlap.status, 416);
    assert_eq!(overlap.header("range"), Some("0-999"));

    let rest = chunk("1000-2999", &data[1000..]);
    assert_eq!(rest.status, 202);
    assert_eq!(rest.header("range"), Some("0-2999"));

    let status = curl(&session, &[], None);
    assert_eq!(status.status, 204);
    assert_eq!(status.header("range"), Some("0-2999"));

    let separator = if session.contains('?') { '&' } else { '?' };
    let finished = curl(
        &format!("{session}{separator}digest={digest}"),
        &["-X", "PUT"],
        None,
    );
    assert_eq!(finished.status, 201);
    assert_eq!(
        finished.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        curl(&session, &[], None).status,
        404,
        "finished session is gone"
    );

    let blob = format!("{base}/v2/curl/app/blobs/{digest}");
    let whole = curl(&blob, &[], None);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);

    let part = curl(&blob, &["-r", "100-199"], None);
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 100-199/3000"));
    assert_eq!(part.body, &data[100..200]);

    let tail = curl(&blob, &["-r", "-10"], None);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &data[2990..]);

    let beyond = curl(&blob, &["-r", "3000-"], None);
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */3000"));

    let head = curl(&blob, &["-I"], None);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("3000"));

    assert_eq!(curl(&blob, &["-X", "DELETE"], None).status, 202);
    let gone = curl(&blob, &[], None);
    assert_eq!(gone.status, 404);
    assert_eq!(error_code(&gone), "BLOB_UNKNOWN");
}
