//! The load test over HTTP: a LoRAX-compatible server's `POST /generate_stream` (SSE), read
//! with a small HTTP/1.1 client on `std::net` (one connection per request, `Connection:
//! close`; chunked or plain bodies), so the load generator needs no async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{LoadRequest, LoadTarget, RequestTiming};
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub prefix: String,
}

impl std::str::FromStr for HttpUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |m: &str| Error::InvalidArgument(format!("--url {s:?}: {m} (expected http://HOST:PORT)"));
        let rest = s.strip_prefix("http://").ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let prefix = path.trim_end_matches('/');
        Ok(HttpUrl { host: host.to_string(), port, prefix: if prefix.is_empty() { String::new() } else { format!("/{prefix}") } })
    }
}

/// A response body with `Transfer-Encoding: chunked` decoded.
struct Chunked<R: BufRead> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF after the previous chunk's data.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {size:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed inside a chunk"));
        }
        self.left -= n;
        Ok(n)
    }
}

/// Sends one POST and returns (status, headers lowercased, body reader).
pub fn post(url: &HttpUrl, path: &str, body: &str, timeout: Duration) -> Result<(u16, Vec<(String, String)>, Box<dyn BufRead>)> {
    let io = |e: std::io::Error| Error::BadRequest(format!("http://{}:{}{}{path}: {e}", url.host, url.port, url.prefix));
    let mut stream = TcpStream::connect((url.host.as_str(), url.port)).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let req = format!(
        "POST {}{path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.prefix,
        url.host,
        url.port,
        body.len()
    );
    stream.write_all(req.as_bytes()).map_err(io)?;
    let mut r = BufReader::new(stream);
    let mut status_line = String::new();
    r.read_line(&mut status_line).map_err(io)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::BadRequest(format!("bad HTTP status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(io)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body: Box<dyn BufRead> = if chunked { Box::new(BufReader::new(Chunked { inner: r, left: 0, done: false })) } else { Box::new(r) };
    Ok((status, headers, body))
}

/// `POST /generate_stream` on a LoRAX-compatible server. Prompt ids are decoded to text with
/// the model's tokenizer (the server re-encodes them; the count can differ by a token or two).
pub struct HttpTarget {
    pub url: HttpUrl,
    pub tokenizer: TextTokenizer,
    pub timeout: Duration,
}

impl LoadTarget for HttpTarget {
    fn run(&self, req: &LoadRequest) -> Result<RequestTiming> {
        let inputs = self.tokenizer.decode(&req.prompt_ids, false)?;
        let mut params = serde_json::json!({ "max_new_tokens": req.max_new_tokens, "do_sample": false, "ignore_eos_token": true });
        if let Some(a) = &req.adapter {
            params["adapter_id"] = a.clone().into();
        }
        let body = serde_json::json!({ "inputs": inputs, "parameters": params }).to_string();
        let t0 = Instant::now();
        let (status, _, mut r) = post(&self.url, "/generate_stream", &body, self.timeout)?;
        if status != 200 {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            return Err(Error::BadRequest(format!("HTTP {status}: {}", text.trim())));
        }
        let mut timing = RequestTiming::default();
        let mut line = String::new();
        loop {
            line.clear();
            let n = r.read_line(&mut line).map_err(|e| Error::BadRequest(format!("reading the event stream: {e}")))?;
            if n == 0 {
                break;
            }
            let Some(data) = line.trim_end().strip_prefix("data:") else { continue };
            let v: serde_json::Value = serde_json::from_str(data.trim()).map_err(|e| Error::BadRequest(format!("bad SSE event {data:?}: {e}")))?;
            if let Some(err) = v.get("error") {
                return Err(Error::BadRequest(format!("server error: {err}")));
            }
            if v.get("token").is_some_and(|t| !t.is_null()) {
                if timing.output_tokens == 0 {
                    timing.ttft = t0.elapsed();
                }
                timing.output_tokens += 1;
            }
        }
        timing.total = t0.elapsed();
        if timing.output_tokens == 0 {
            return Err(Error::BadRequest("the server streamed no tokens".into()));
        }
        Ok(timing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u: HttpUrl = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(u, HttpUrl { host: "127.0.0.1".into(), port: 8080, prefix: String::new() });
        let u: HttpUrl = "http://example.org/api/".parse().unwrap();
        assert_eq!((u.port, u.prefix.as_str()), (80, "/api"));
        assert!("https://x:1".parse::<HttpUrl>().is_err());
        assert!("http://:80".parse::<HttpUrl>().is_err());
        assert!("http://h:notaport".parse::<HttpUrl>().is_err());
    }

    #[test]
    fn decodes_chunked_bodies() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked { inner: &raw[..], left: 0, done: false }.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello, world");
        let mut out = String::new();
        assert!(Chunked { inner: &b"zz\r\n"[..], left: 0, done: false }.read_to_string(&mut out).is_err());
    }

    /// Against a one-shot fake server on loopback: a chunked SSE stream of three tokens.
    #[test]
    fn streams_from_a_fake_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            let events: String = (0..3).map(|i| format!("data: {{\"token\": {{\"id\": {i}, \"text\": \"x\"}}}}\n\n")).collect();
            let body = format!("{:x}\r\n{events}\r\n0\r\n\r\n", events.len());
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes()).unwrap();
        });
        let url: HttpUrl = format!("http://127.0.0.1:{port}").parse().unwrap();
        let (status, headers, mut r) = post(&url, "/generate_stream", "{}", Duration::from_secs(5)).unwrap();
        assert_eq!(status, 200);
        assert!(headers.iter().any(|(k, _)| k == "content-type"));
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text.matches("data:").count(), 3);
        server.join().unwrap();
    }
}
