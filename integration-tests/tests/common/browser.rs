//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`): loads
//! pages and reads values from them with JavaScript.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use super::free_port;

/// A chromedriver process with one headless Chromium session.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

fn driver_path() -> Option<String> {
    ["chromedriver", "/usr/bin/chromedriver"]
        .iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|p| p.to_string())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that may autoplay muted video.
    pub fn start() -> Browser {
        let driver = driver_path()
            .expect("chromedriver is missing: scripts/test.sh installs chromium-driver");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver: child,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None).is_none() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required",
                format!("--user-data-dir={}", browser._profile.path().display()),
            ]},
        }}});
        let v = browser
            .call("POST", "/session", Some(caps))
            .expect("a Chromium session starts");
        browser.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        browser
    }

    /// One WebDriver command. chromedriver keeps connections open, so the answer is read
    /// by its `Content-Length`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .ok()?;
        let mut reader = BufReader::new(s);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().ok()?;
                }
            }
        }
        let mut buf = vec![0; length];
        reader.read_exact(&mut buf).ok()?;
        serde_json::from_slice(&buf).ok()
    }

    /// Opens `url` and waits for it to load.
    pub fn open(&self, url: &str) {
        let v = self
            .call(
                "POST",
                &format!("/session/{}/url", self.session),
                Some(json!({ "url": url })),
            )
            .expect("navigation answers");
        assert!(v["value"].is_null(), "opening {url}: {v}");
    }

    /// Runs `script` (a function body that may `return` a value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        let v = self
            .call(
                "POST",
                &format!("/session/{}/execute/sync", self.session),
                Some(json!({ "script": script, "args": [] })),
            )
            .expect("script answers");
        v["value"].clone()
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self
            .call(
                "GET",
                &format!("/session/{}/screenshot", self.session),
                None,
            )
            .expect("screenshot answers");
        base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap_or_default())
            .expect("the screenshot is base64")
    }

    /// Sets the window's size in CSS pixels.
    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &format!("/session/{}/window/rect", self.session),
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Polls `script` until it returns true.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(script) == Value::Bool(true) {
                return;
            }
            let page = self.eval("return document.body ? document.body.innerText : ''");
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the page shows:\n{}",
                page.as_str().unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
