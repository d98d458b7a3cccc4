//! The load test over HTTP: a LoRAX-compatible server's `POST /generate_stream` (SSE), read
//! with `ureq` (blocking, so the load generator's threads need no async runtime; keep-alive
//! connections pooled across requests, as a real client fleet keeps them).

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use super::{LoadRequest, LoadTarget, RequestTiming};
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// `http://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Path prefix before `/generate_stream` or `/v1/...`.
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

impl HttpUrl {
    fn endpoint(&self, path: &str) -> String {
        format!("http://{}:{}{}{path}", self.host, self.port, self.prefix)
    }
}

/// A client for one server: `timeout` bounds connecting and each read (a stalled stream fails
/// that request); idle pooled connections are dropped after 5 s, before the server's 10 s idle
/// timeout could close one under a request.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .max_idle_age(Duration::from_secs(5))
        .build()
        .into()
}

/// Sends one JSON POST and returns (status, body reader).
pub fn post(agent: &ureq::Agent, url: &HttpUrl, path: &str, body: &str) -> Result<(u16, Box<dyn BufRead>)> {
    let endpoint = url.endpoint(path);
    let resp = agent
        .post(&endpoint)
        .header("Content-Type", "application/json")
        .header("Accept", "text/event-stream")
        .send(body)
        .map_err(|e| Error::BadRequest(format!("{endpoint}: {e}")))?;
    let status = resp.status().as_u16();
    Ok((status, Box::new(BufReader::new(resp.into_body().into_reader()))))
}

/// `POST /generate_stream` on a LoRAX-compatible server. Prompt ids are decoded to text with
/// the model's tokenizer (the server re-encodes them; the count can differ by a token or two).
pub struct HttpTarget {
    url: HttpUrl,
    tokenizer: TextTokenizer,
    agent: ureq::Agent,
}

impl HttpTarget {
    /// `timeout`: the longest wait to connect and for each read of the stream.
    pub fn new(url: HttpUrl, tokenizer: TextTokenizer, timeout: Duration) -> Self {
        HttpTarget { url, tokenizer, agent: agent(timeout) }
    }
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
        let (status, mut r) = post(&self.agent, &self.url, "/generate_stream", &body)?;
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

    /// Against a one-shot fake server on loopback: a chunked SSE stream of three tokens.
    #[test]
    fn streams_from_a_fake_server() {
        use std::io::Write;
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
        let (status, mut r) = post(&agent(Duration::from_secs(5)), &url, "/generate_stream", "{}").unwrap();
        assert_eq!(status, 200);
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text.matches("data:").count(), 3);
        server.join().unwrap();
    }
}
