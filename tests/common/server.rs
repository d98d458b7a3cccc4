//! A `lorafleet serve` process for end-to-end tests (killed when dropped) and a small HTTP/1.1
//! client on std's TcpStream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// A running server's address and its stderr lines so far (the request log).
#[derive(Clone)]
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The `lorafleet` binary: cargo's own path in this crate's tests; in the trainer's tests, the
/// one built beside `lorafleet-train` (`cargo test --workspace` builds both).
pub fn lorafleet_bin() -> std::path::PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_lorafleet") {
        return p.into();
    }
    let train = std::path::PathBuf::from(option_env!("CARGO_BIN_EXE_lorafleet-train").expect("a test of lorafleet or lorafleet-trainer"));
    let p = train.with_file_name("lorafleet");
    assert!(p.is_file(), "{} is missing: build the workspace first (`cargo test --workspace` builds it)", p.display());
    p
}

/// The server process, killed when this is dropped (passing or not).
pub struct TestServer {
    pub handle: ServerHandle,
    child: Child,
}

impl std::ops::Deref for TestServer {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestServer {
    /// Sends SIGTERM and waits up to `wait` for the process to exit; its status, or None.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let end = std::time::Instant::now() + wait;
        while std::time::Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts `lorafleet serve ARGS` (plus `--port 0`) with the extra environment `envs`, and
    /// waits up to `wait` for its `listening on http://ADDR` line.
    pub fn start(args: &[&std::ffi::OsStr], envs: &[(&str, &str)], wait: Duration) -> TestServer {
        let mut cmd = Command::new(lorafleet_bin());
        cmd.arg("serve").args(args).args(["--port", "0"]).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start lorafleet serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if let Some(a) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(a.parse::<SocketAddr>().expect("address"));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = TestServer { handle: ServerHandle { addr: "0.0.0.0:0".parse().unwrap(), log: log.clone() }, child };
        match rx.recv_timeout(wait) {
            Ok(addr) => server.handle.addr = addr,
            Err(_) => panic!("the server did not start: {:?}", log.lock().unwrap()),
        }
        server
    }
}

impl ServerHandle {
    pub fn request(&self, method: &str, path: &str, body: &str) -> Reply {
        self.request_with(method, path, body, "")
    }

    /// `request` with extra header lines (each ending in `\r\n`).
    pub fn request_with(&self, method: &str, path: &str, body: &str, headers: &str) -> Reply {
        let mut c = TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
        let headers = String::from_utf8(raw[..split].to_vec()).unwrap();
        let body = &raw[split + 4..];
        let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_vec() };
        let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
        Reply { status, headers, body: String::from_utf8(body).unwrap() }
    }

    pub fn post(&self, path: &str, body: Value) -> Reply {
        self.request("POST", path, &body.to_string())
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        self.body.split("\n\n").filter_map(|f| f.strip_prefix("data: ")).map(str::to_owned).collect()
    }
}

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = raw.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..nl]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[nl + 2..nl + 2 + size]);
        raw = &raw[nl + 2 + size + 2..];
    }
}
