//! The Docker-compatible REST API that Docker and podman (`podman system service`) serve on a
//! unix socket: `GET /containers/<id>/json` gives the container's image. A small blocking
//! HTTP/1.1 client (one request per connection, `Connection: close`) is all this needs, so no
//! HTTP stack is linked for it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a runtime says of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    /// `sha256:<64 hex>`: the image id (the digest of the image's config), the same on every node
    /// that runs this image.
    pub image: String,
    /// The reference the container was started from (`repo:tag`), may be empty.
    pub image_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{socket}: {source}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{socket}: the runtime does not know container {id}")]
    NotFound { socket: PathBuf, id: String },
    #[error("{socket}: {what}")]
    Bad { socket: PathBuf, what: String },
}

/// Asks the runtime on `socket` for the image of container `id`.
pub fn inspect(socket: &Path, id: &str) -> Result<ContainerImage, ApiError> {
    let io = |source| ApiError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let bad = |what: String| ApiError::Bad {
        socket: socket.to_path_buf(),
        what,
    };
    let (status, body) = get(socket, &format!("/containers/{id}/json")).map_err(io)?;
    if status == 404 {
        return Err(ApiError::NotFound {
            socket: socket.to_path_buf(),
            id: id.to_string(),
        });
    }
    if status != 200 {
        return Err(bad(format!(
            "GET /containers/{id}/json answered HTTP {status}"
        )));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("container JSON: {e}")))?;
    let image = json
        .get("Image")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("container JSON has no Image".into()))?;
    let image = normalise_image_id(image)
        .ok_or_else(|| bad(format!("container Image {image:?} is not a sha256 id")))?;
    let image_name = json
        .pointer("/Config/Image")
        .and_then(|v| v.as_str())
        .or_else(|| json.get("ImageName").and_then(|v| v.as_str()))
        .unwrap_or("")
        .to_string();
    Ok(ContainerImage { image, image_name })
}

/// `sha256:<hex>` or a bare 64-hex id → `sha256:<hex>`.
pub(crate) fn normalise_image_id(image: &str) -> Option<String> {
    let hex = image
        .strip_prefix("sha256:")
        .unwrap_or(image)
        .to_ascii_lowercase();
    imprint_proto::digest::is_lower_hex64(&hex).then(|| format!("sha256:{hex}"))
}

/// One GET; returns (status, body).
fn get(socket: &Path, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // One write of the whole request: `write!` on an unbuffered stream issues a write per
    // format piece, and a server that answers after the first read would see a torn request.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: imprint-agent\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })
}

fn parse_response(response: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..head_end]).ok()?;
    let body = &response[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some((status, body))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((404, b"abcde".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn image_ids() {
        let hex = "a".repeat(64);
        assert_eq!(normalise_image_id(&hex), Some(format!("sha256:{hex}")));
        assert_eq!(
            normalise_image_id(&format!("sha256:{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(normalise_image_id("busybox:latest"), None);
    }

    /// A real HTTP exchange over a unix socket, with a server thread answering like the runtime.
    #[test]
    fn inspect_over_a_unix_socket() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let hex = "b".repeat(64);
        let body = format!(
            r#"{{"Id":"x","Image":"sha256:{hex}","Config":{{"Image":"localhost/web:1"}}}}"#
        );
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            // Read the whole request head, as a real HTTP server does.
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut chunk).expect("read");
                assert!(n > 0, "client closed before the request ended");
                request.extend_from_slice(&chunk[..n]);
            }
            let request = String::from_utf8_lossy(&request).to_string();
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .expect("write");
            request
        });
        let found = inspect(&socket, "c1").expect("inspect");
        assert_eq!(found.image, format!("sha256:{hex}"));
        assert_eq!(found.image_name, "localhost/web:1");
        let request = server.join().expect("server");
        assert!(
            request.starts_with("GET /containers/c1/json HTTP/1.1\r\n"),
            "{request}"
        );
    }
}
