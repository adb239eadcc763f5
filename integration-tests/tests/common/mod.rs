//! A real Castwork cluster for tests: an orchestrator and worker processes (the built
//! binaries) on their own RabbitMQ vhost, the shared Redis, and a temporary object store.

#![allow(dead_code)]

pub mod browser;
pub mod netns;
pub mod output_check;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A built binary of the workspace (`cargo build --bins` first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` before the integration tests",
        p.display()
    );
    p
}

pub fn testdata(name: &str) -> PathBuf {
    let p = workspace().join("testdata").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-testdata.sh",
        p.display()
    );
    p
}

/// Runs the `ffmpeg` CLI (test fixtures only; Castwork itself never spawns it).
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ffprobe -of json` with extra arguments.
pub fn ffprobe(path: &Path, args: &[&str]) -> Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

/// Decodes every stream of a file or playlist; returns FFmpeg's complaints.
pub fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let mut s = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        s.push_str(&format!("\nexit status {}", out.status));
    }
    s
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port free now and never handed out before by this test process: a port given to a
/// server that has not bound it yet (Redis starting) must not go to another one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A minimal HTTP GET: (status, body).
/// The value of the metric line at `addr`'s `/metrics` that starts with `line_start` (a
/// name with its labels); 0 when there is none.
pub fn metric(addr: &str, line_start: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics").expect("metrics answer");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub struct Cluster {
    pub vhost: String,
    pub amqp_url: String,
    pub dir: tempfile::TempDir,
    pub orchestrator_addr: String,
    /// `STORAGE_URL` and any other environment every process gets.
    pub env: Vec<(String, String)>,
    children: Vec<Child>,
    /// With per-role RabbitMQ users: the AMQP URL of each binary (orchestrator, worker,
    /// broadcaster), and the users to delete at the end.
    role_urls: Vec<(String, String)>,
    /// RabbitMQ users made for this cluster, deleted with it.
    users: Vec<String>,
    /// The cluster's own Redis (dropped after the processes): clusters of parallel tests
    /// must not share one, or each would see the others' workers and overdue jobs.
    _redis: Option<RedisNode>,
}

impl Cluster {
    /// Starts an orchestrator and `workers` worker processes of one slot each, on a local
    /// directory object store.
    pub fn start(workers: usize) -> Cluster {
        Cluster::start_with(workers, &[], Vec::new())
    }

    /// Like [`Cluster::start`], with extra orchestrator flags and environment (a
    /// `STORAGE_URL` there replaces the local directory).
    pub fn start_with(
        workers: usize,
        orchestrator_args: &[&str],
        env: Vec<(String, String)>,
    ) -> Cluster {
        Cluster::start_inner(workers, orchestrator_args, env, false)
    }

    /// Like [`Cluster::start`], but each role connects as its own RabbitMQ user with the
    /// permissions `infra/rabbitmq/definitions.json` gives that role.
    pub fn start_with_role_users(workers: usize) -> Cluster {
        Cluster::start_inner(workers, &[], Vec::new(), true)
    }

    /// Creates a user per role on this cluster's vhost, with the deployment's permissions.
    fn add_role_users(&mut self) {
        for role in ["orchestrator", "worker", "broadcaster"] {
            let url = self.add_broker_user(role, role);
            self.role_urls.push((role.to_string(), url));
        }
    }

    /// Creates RabbitMQ user `VHOST-NAME` on this cluster's vhost with the permissions
    /// `infra/rabbitmq/definitions.json` gives `role`, and returns its AMQP URL (the user
    /// goes with the cluster).
    pub fn add_broker_user(&mut self, name: &str, role: &str) -> String {
        let user = format!("{}-{name}", self.vhost);
        rabbitmqctl(&["add_user", &user, "role-secret"]);
        let [configure, write, read] = role_permissions(role);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &self.vhost,
            &user,
            &configure,
            &write,
            &read,
        ]);
        self.users.push(user.clone());
        format!("amqp://{user}:role-secret@127.0.0.1:5672/{}", self.vhost)
    }

    /// The AMQP URL a binary connects with.
    pub fn amqp_url_of(&self, binary: &str) -> String {
        self.role_urls
            .iter()
            .find(|(r, _)| r == binary)
            .map_or_else(|| self.amqp_url.clone(), |(_, u)| u.clone())
    }

    fn start_inner(
        workers: usize,
        orchestrator_args: &[&str],
        env: Vec<(String, String)>,
        roles: bool,
    ) -> Cluster {
        // A broker of its own (AMQP_URL in `env`) needs no vhost; otherwise each cluster
        // gets one on the machine's RabbitMQ.
        let own_broker = env
            .iter()
            .find(|(k, _)| k == "AMQP_URL")
            .map(|(_, v)| v.clone());
        let vhost = if own_broker.is_some() {
            String::new()
        } else {
            let v = format!("castwork-test-{}-{}", std::process::id(), free_port());
            rabbitmqctl(&["add_vhost", &v]);
            rabbitmqctl(&["set_permissions", "-p", &v, "guest", ".*", ".*", ".*"]);
            v
        };
        let dir = tempfile::tempdir().unwrap();
        let orchestrator_addr = format!("127.0.0.1:{}", free_port());
        let mut all_env = vec![(
            "STORAGE_URL".to_string(),
            format!("file://{}", dir.path().join("data").display()),
        )];
        let redis =
            (!env.iter().any(|(k, _)| k == "REDIS_URL")).then(|| RedisNode::start_with(false));
        if let Some(r) = &redis {
            all_env.push(("REDIS_URL".to_string(), r.url()));
        }
        all_env.extend(env);
        let mut c = Cluster {
            amqp_url: own_broker
                .unwrap_or_else(|| format!("amqp://guest:guest@127.0.0.1:5672/{vhost}")),
            vhost,
            dir,
            orchestrator_addr,
            env: all_env,
            children: Vec::new(),
            role_urls: Vec::new(),
            users: Vec::new(),
            _redis: redis,
        };
        if roles {
            c.add_role_users();
        }
        let mut args = vec!["--http-addr", &c.orchestrator_addr];
        args.extend_from_slice(orchestrator_args);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let orch = c.spawn("orchestrator", &refs);
        c.children.push(orch);
        for i in 0..workers {
            let w = c.spawn("worker", &["--worker-id", &format!("w{i}")]);
            c.children.push(w);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http_get(&c.orchestrator_addr, "/healthz") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "orchestrator not healthy: {}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Starts another process of the cluster (e.g. a worker joining later).
    pub fn add(&mut self, name: &str, args: &[&str]) {
        let child = self.spawn(name, args);
        self.children.push(child);
    }

    /// The cluster's Redis (`REDIS_URL` of its processes).
    pub fn redis_url(&self) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == "REDIS_URL")
            .map(|(_, v)| v.as_str())
            .expect("every cluster has a Redis")
    }

    /// Runs `orchestrator --redis-url REDIS ARGS` on this cluster's Redis, asserting that
    /// it succeeds; its stdout.
    pub fn orchestrator_cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin("orchestrator"))
            .args(["--redis-url", self.redis_url()])
            .args(args)
            .output()
            .expect("orchestrator runs");
        assert!(out.status.success(), "orchestrator {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The id the orchestrator issued for a segment's attempt (keyed with the secret it
    /// keeps in Redis, as `castwork_orchestrator::workers::JobIds` does): what a worker
    /// that was really given the job reports.
    pub fn job_id(&self, stream: &str, seq: u64, attempt: u32) -> uuid::Uuid {
        use hmac::Mac as _;
        let out = Command::new("redis-cli")
            .args(["-u", self.redis_url(), "GET", "cw:job_key"])
            .output()
            .expect("redis-cli runs");
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!key.is_empty(), "no job key in Redis yet");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(b"castwork job id\0");
        mac.update(stream.as_bytes());
        mac.update(&[0]);
        mac.update(&seq.to_be_bytes());
        mac.update(&attempt.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn envs(&self, cmd: &mut Command) {
        cmd.env("AMQP_URL", &self.amqp_url).env("RUST_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let program = cmd.get_program().to_string_lossy().to_string();
        if let Some((_, url)) = self
            .role_urls
            .iter()
            .find(|(r, _)| program.ends_with(&format!("/{r}")))
        {
            cmd.env("AMQP_URL", url);
        }
    }

    fn spawn(&self, name: &str, args: &[&str]) -> Child {
        self.command(name).args(args).spawn().expect("spawn")
    }

    /// A command for one of the cluster's binaries, with its environment and a log file.
    fn command(&self, name: &str) -> Command {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}-{n}.log"))).unwrap();
        let mut cmd = Command::new(bin(name));
        self.envs(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }

    /// Sends a signal to one of the cluster's processes by pid and, but for STOP and CONT,
    /// waits for it to exit; returns its exit status when it is one of ours and has exited.
    pub fn signal(&mut self, pid: u32, signal: &str) -> Option<std::process::ExitStatus> {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .ok()?;
        assert!(ok.success(), "kill -{signal} {pid}");
        if matches!(signal, "STOP" | "CONT") {
            return None;
        }
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for one of the cluster's processes to exit; its status.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait_until("the process to exit", timeout, || {
            status = self.exit_status(pid);
            status.is_some()
        });
        status.unwrap()
    }

    /// The exit status of one of the cluster's processes, once it has exited.
    pub fn exit_status(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        child.try_wait().ok().flatten()
    }

    /// Pids of the cluster's processes of one binary, oldest first.
    pub fn pids(&mut self, name: &str) -> Vec<u32> {
        let exe = bin(name);
        self.children
            .iter_mut()
            .filter_map(|c| c.try_wait().ok().flatten().is_none().then(|| c.id()))
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|p| std::fs::canonicalize(&exe).is_ok_and(|e| e == p))
            })
            .collect()
    }

    /// The `/workers` record of the worker whose identity is `identity`, if any.
    pub fn worker_record(&self, identity: &str) -> Option<Value> {
        self.workers()
            .into_iter()
            .find(|w| w["identity"] == identity)
    }

    /// `/status`'s dead letters, newest first.
    pub fn dead_letters(&self) -> Vec<Value> {
        let (code, body) = http_get(&self.orchestrator_addr, "/status").expect("status answers");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["dead_letters"].as_array().cloned().unwrap_or_default()
    }

    /// Starts one more process like [`Cluster::add`], without the variables `removed` in
    /// its environment.
    pub fn add_without(&mut self, name: &str, args: &[&str], removed: &[&str]) {
        let mut cmd = self.command(name);
        for var in removed {
            cmd.env_remove(var);
        }
        let child = cmd.args(args).spawn().expect("spawn");
        self.children.push(child);
    }

    /// Starts one more process on `host` (a network namespace), with only `env` in its
    /// environment besides PATH: what a process on another machine would have. Returns
    /// its pid.
    pub fn add_on_host(
        &mut self,
        host: &netns::Host,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> u32 {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}-{n}.log"))).unwrap();
        let mut cmd = host.command(&bin(name));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// The orchestrator's `GET /workers`.
    pub fn workers(&self) -> Vec<Value> {
        let (code, body) = http_get(&self.orchestrator_addr, "/workers").expect("workers answers");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["workers"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `GET /streams/NAME` until every segment of the stream is resolved: its state
    /// is `complete`, or `incomplete` when segments failed or were skipped (a test that
    /// needs one of them asserts it).
    pub fn wait_complete(&self, stream: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, body)) =
                http_get(&self.orchestrator_addr, &format!("/streams/{stream}"))
            {
                let v: Value = serde_json::from_str(&body).unwrap();
                if v["state"] == "complete" || v["state"] == "incomplete" {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} did not complete: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sequence numbers listed by a rendition's media playlist, in order.
    pub fn playlist_seqs(&self, stream: &str, rung: &str) -> Vec<u64> {
        let text = std::fs::read(
            self.storage_dir()
                .join(format!("streams/{stream}/{rung}/index.m3u8")),
        )
        .unwrap();
        let media = m3u8_rs::parse_media_playlist_res(&text).expect("media playlist parses");
        media
            .segments
            .iter()
            .map(|s| s.uri.split('.').next().unwrap().parse().unwrap())
            .collect()
    }

    /// `broadcaster push` in the background, output to a file.
    pub fn push_in_background(&self, file: &Path, stream: &str, args: &[&str]) -> Child {
        let log =
            std::fs::File::create(self.dir.path().join(format!("push-{stream}.out"))).unwrap();
        let mut cmd = Command::new(bin("broadcaster"));
        self.envs(&mut cmd);
        cmd.env("RUST_LOG", "warn")
            .arg("push")
            .arg(file)
            .args(["--stream", stream, "--wait", "--admit-timeout-secs", "60"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd.spawn().expect("broadcaster runs")
    }

    /// Messages waiting in `queue` (0 when it has none, or is not there).
    pub fn queue_depth(&self, queue: &str) -> u64 {
        self.queue_depths()
            .into_iter()
            .find(|(q, _)| q == queue)
            .map_or(0, |(_, n)| n)
    }

    /// Messages waiting in each of the vhost's queues.
    pub fn queue_depths(&self) -> Vec<(String, u64)> {
        let out = Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "-p",
                &self.vhost,
                "name",
                "messages",
            ])
            .output()
            .expect("rabbitmqctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(d) = std::fs::read_dir(self.dir.path()) {
            for e in d.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    out.push_str(&format!(
                        "\n--- {}\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    ));
                }
            }
        }
        out
    }

    /// `broadcaster push FILE --stream NAME --wait ARGS...`
    ///
    /// A push that completes into a local object store gets the independent output check
    /// ([`output_check::assert_output_ok`]) against its file: every clip a test pushes to
    /// the end is checked, whatever the test is about.
    pub fn push(&self, file: &Path, stream: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("broadcaster"));
        self.envs(&mut cmd);
        cmd.env("RUST_LOG", "warn")
            .arg("push")
            .arg(file)
            .args(["--stream", stream, "--wait", "--admit-timeout-secs", "60"])
            .args(args);
        let out = cmd.output().expect("broadcaster runs");
        if out.status.success() {
            self.check_output(file, stream);
        }
        out
    }

    /// The output check of a stream that completed into this cluster's local store (an
    /// incomplete one, or one in a bucket, is the test's own business).
    pub fn check_output(&self, file: &Path, stream: &str) {
        let complete = http_get(&self.orchestrator_addr, &format!("/streams/{stream}"))
            .and_then(|(code, body)| (code == 200).then_some(body))
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .is_some_and(|v| v["state"] == "complete");
        let stored = self
            .storage_dir()
            .join(format!("streams/{stream}"))
            .is_dir();
        if complete && stored && file.is_file() {
            output_check::assert_output_ok(&self.storage_dir(), stream, file);
        }
    }

    /// The orchestrator's `GET /streams/NAME`.
    pub fn status(&self, stream: &str) -> Value {
        let (code, body) = http_get(&self.orchestrator_addr, &format!("/streams/{stream}"))
            .expect("status answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.vhost.is_empty() {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_vhost", &self.vhost])
                .output();
        }
        for user in &self.users {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", user])
                .output();
        }
    }
}

/// A unique stream name per run, so tests never collide in the shared Redis.
pub fn stream_name(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{t}")
}

/// A RabbitMQ node of a test's own (port, data and logs in a temporary directory), for tests
/// that stop and start the broker without disturbing anything else.
pub struct RabbitNode {
    pub name: String,
    pub port: u16,
    /// The TLS listener's port, for a node started with [`RabbitNode::start_tls`].
    pub tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl RabbitNode {
    pub fn start() -> RabbitNode {
        RabbitNode::start_with(None)
    }

    /// A node with a TLS listener too, serving `certs`/server.pem and server.key (as
    /// `scripts/dev-tls.sh` makes them).
    pub fn start_tls(certs: &Path) -> RabbitNode {
        RabbitNode::start_with(Some(certs))
    }

    fn start_with(certs: Option<&Path>) -> RabbitNode {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let port = free_port();
        // Its own config file: the machine's may pin the listener to 5672.
        let conf = dir.path().join("rabbitmq.conf");
        let mut config = format!("listeners.tcp.local = 127.0.0.1:{port}\n");
        let tls_port = certs.map(|certs| {
            let tls_port = free_port();
            for f in ["ca.pem", "server.pem", "server.key"] {
                std::fs::copy(certs.join(f), dir.path().join(f)).unwrap();
            }
            let d = dir.path().display();
            config.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {d}/ca.pem\n\
                 ssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n"
            ));
            tls_port
        });
        std::fs::write(&conf, config).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status();
        let name = format!("cwtest{}x{port}@localhost", std::process::id());
        let d = dir.path().display().to_string();
        let ok = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
            .env("RABBITMQ_PID_FILE", format!("{d}/pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{d}/enabled_plugins"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server runs");
        assert!(ok.success(), "rabbitmq-server -detached failed");
        let node = RabbitNode {
            name,
            port,
            tls_port,
            _dir: dir,
        };
        // The node takes a few seconds to boot; `await_startup` needs it reachable first.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !Command::new("rabbitmqctl")
            .args(["-n", &node.name, "-q", "ping"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not start",
                node.name
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        node.ctl(&["-t", "60", "await_startup"]);
        node
    }

    pub fn ctl(&self, args: &[&str]) {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .output();
    }
}

/// A Redis server of a test's own with every write fsynced to its append-only file, to
/// SIGKILL and start again.
pub struct RedisNode {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Whether every write is fsynced to an append-only file.
    aof: bool,
    /// For a TLS server: the certificates' directory.
    tls: Option<PathBuf>,
    /// For a server with one ACL user (its default user off): the user and its password.
    acl: Option<(String, String)>,
}

impl RedisNode {
    pub fn start() -> RedisNode {
        RedisNode::start_with(true)
    }

    /// A server with (`aof`) or without persistence.
    pub fn start_with(aof: bool) -> RedisNode {
        let mut node = RedisNode {
            aof,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
            acl: None,
        };
        node.restart();
        node
    }

    /// A server that lets in only `user` with `password` (its default user is off).
    pub fn start_auth(user: &str, password: &str) -> RedisNode {
        let mut node = RedisNode {
            aof: false,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
            acl: Some((user.into(), password.into())),
        };
        node.restart();
        node
    }

    /// A server that speaks only TLS (with the certificates `scripts/dev-tls.sh` made in
    /// `certs`) and lets in only `user` with `password` (its default user is off).
    pub fn start_tls(certs: &Path, user: &str, password: &str) -> RedisNode {
        let mut node = RedisNode {
            aof: false,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: Some(certs.to_path_buf()),
            acl: Some((user.into(), password.into())),
        };
        node.restart();
        node
    }

    /// Starts the server (again) on the same port and data.
    pub fn restart(&mut self) {
        let mut listen: Vec<String> = vec!["--port".into(), self.port.to_string()];
        if let Some(certs) = &self.tls {
            let file = |f: &str| certs.join(f).display().to_string();
            listen = vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string(),
                "--tls-cert-file".into(),
                file("server.pem"),
                "--tls-key-file".into(),
                file("server.key"),
                "--tls-ca-cert-file".into(),
                file("ca.pem"),
                "--tls-auth-clients".into(),
                "no".into(),
            ];
        }
        if let Some((user, password)) = &self.acl {
            // One argument per word: redis-server quotes each as one token.
            for rule in [
                "default off".to_string(),
                format!("{user} on >{password} ~* &* +@all"),
            ] {
                listen.push("--user".into());
                listen.extend(rule.split(' ').map(String::from));
            }
        }
        let child = Command::new("redis-server")
            .args(&listen)
            .args([
                "--bind",
                "127.0.0.1",
                "--appendonly",
                if self.aof { "yes" } else { "no" },
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.acl {
            Some((user, password)) => {
                format!("{scheme}://{user}:{password}@localhost:{}/", self.port)
            }
            None => format!("{scheme}://127.0.0.1:{}/", self.port),
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Generates a test-pattern clip with a 440 Hz tone: `size` (e.g. `1280x720`) at 30 fps,
/// H.264 with a keyframe every 2 s, the audio in `audio_codec`; the container follows
/// `path`'s extension.
pub fn tone_clip(path: &Path, size: &str, secs: u32, audio_codec: &str) {
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={size}:rate=30"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        &secs.to_string(),
        "-c:v",
        "libx264",
        "-g",
        "60",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        audio_codec,
        path.to_str().unwrap(),
    ]);
}

/// A generated 640x360 30 fps clip with AAC audio and a keyframe every 2 s.
pub fn clip(dir: &Path, secs: u32) -> PathBuf {
    let p = dir.join("clip.mp4");
    tone_clip(&p, "640x360", secs, "aac");
    p
}

/// Whether a stream's status (`GET /streams/NAME`) says it ended with none of its segments
/// done: aborted by its publisher (`failed`) or, when every segment failed before the
/// abort came, `incomplete` (an ended stream cannot be aborted).
pub fn ended_undone(status: &Value) -> bool {
    matches!(status["state"].as_str(), Some("failed" | "incomplete"))
        && status["segments"]["done"].as_u64().unwrap_or(0) == 0
}

/// Polls `f` until it holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP/1.1 answer: status, headers (lower-case names) and body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<HttpAnswer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A server may answer (413) and close before taking the whole body: read its answer.
    let wrote = s.write_all(body);
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        wrote?;
        return Err(e);
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    })
}

/// Addresses of a `broadcaster serve` with live ingest.
pub struct LiveServer {
    pub http: String,
    pub rtmp: String,
}

impl LiveServer {
    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://{}/live/{key}", self.rtmp)
    }
}

impl Cluster {
    /// Starts `broadcaster serve` with RTMP and HTTP push, the 240p + 360p ladder and short
    /// reconnect and idle times, plus `args`; ingest is open (`--open-ingest`) unless
    /// `args` name an auth webhook.
    pub fn serve_live(&mut self, args: &[&str]) -> LiveServer {
        let mut all = args.to_vec();
        if !args.contains(&"--auth-webhook-url") {
            all.push("--open-ingest");
        }
        self.serve_live_checked(&all)
    }

    /// [`Cluster::serve_live`] with its default ingest check: stream keys in the cluster's
    /// Redis (`broadcaster keys add`).
    pub fn serve_live_checked(&mut self, args: &[&str]) -> LiveServer {
        let http = format!("127.0.0.1:{}", free_port());
        let rtmp = format!("127.0.0.1:{}", free_port());
        let mut all = vec![
            "serve",
            "--http-addr",
            &http,
            "--rtmp-addr",
            &rtmp,
            "--live-profiles",
            "P240p30fps16x9,P360p30fps16x9",
            "--http-push-idle-secs",
            "3",
        ];
        if !args.contains(&"--live-reconnect-secs") {
            all.extend_from_slice(&["--live-reconnect-secs", "2"]);
        }
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.add("broadcaster", &refs);
        wait_until("broadcaster serve", Duration::from_secs(30), || {
            http_get(&http, "/healthz").is_some_and(|(c, _)| c == 200)
        });
        LiveServer { http, rtmp }
    }
}

/// An HTTP-push client of one stream: sends back the push token its first segment's
/// answer carried, as a real client must.
pub struct Pusher {
    pub addr: String,
    /// The stream part of the push path (the name, or a stream key).
    pub path: String,
    pub token: Option<String>,
}

impl Pusher {
    pub fn new(live: &LiveServer, path: &str) -> Pusher {
        Pusher {
            addr: live.http.clone(),
            path: path.to_string(),
            token: None,
        }
    }

    /// `PUT /live/PATH/SEQ.ts` (or `method`) with `Content-Duration: 2000`, the token and
    /// `headers`; keeps a token the answer carries.
    pub fn send(
        &mut self,
        method: &str,
        file: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpAnswer {
        let mut all = Vec::new();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-duration"))
        {
            all.push(("Content-Duration", "2000"));
        }
        let token = self.token.clone();
        if let Some(t) = &token {
            all.push(("Castwork-Push-Token", t));
        }
        all.extend_from_slice(headers);
        let a = http_request(
            &self.addr,
            method,
            &format!("/live/{}/{file}", self.path),
            &all,
            body,
            Duration::from_secs(120),
        )
        .expect("the broadcaster answers");
        if let Some(t) = a.header("castwork-push-token") {
            self.token = Some(t.to_string());
        }
        a
    }

    /// Pushes segment `seq` from `path`.
    pub fn put(&mut self, seq: u64, path: &Path) -> HttpAnswer {
        self.send(
            "PUT",
            &format!("{seq}.ts"),
            &[],
            &std::fs::read(path).unwrap(),
        )
    }
}

/// The inputs and encoder settings of a live test source: `secs` of a 640x360 30 fps test
/// pattern in H.264 (veryfast, a keyframe exactly every 2 s) with a 440 Hz tone in AAC.
pub fn live_source_args(secs: u32) -> Vec<String> {
    [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "60",
        "-keyint_min",
        "60",
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "96k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `ffmpeg -re` publishing [`live_source_args`] of `secs` to `url` over RTMP, in the
/// background.
pub fn rtmp_publisher(url: &str, secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-v", "error", "-re"])
        .args(live_source_args(secs))
        .args(["-f", "flv"])
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg runs")
}

/// The (configure, write, read) permissions `infra/rabbitmq/definitions.json` gives
/// `role`'s RabbitMQ user (`castwork-ROLE`).
pub fn role_permissions(role: &str) -> [String; 3] {
    let defs: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("infra/rabbitmq/definitions.json")).unwrap(),
    )
    .unwrap();
    let p = defs["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user"] == format!("castwork-{role}"))
        .unwrap_or_else(|| panic!("definitions.json has no castwork-{role}"));
    ["configure", "write", "read"].map(|k| p[k].as_str().unwrap().to_string())
}

/// Takes one message off `queue` as `amqp_url`'s user and puts it back; its body.
pub fn peek_message(amqp_url: &str, queue: &str) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = c.create_channel().await.unwrap();
        let got = ch
            .basic_get(queue.into(), Default::default())
            .await
            .unwrap()
            .expect("a message waits in the queue");
        let body = got.delivery.data.clone();
        got.delivery
            .acker
            .reject(lapin::options::BasicRejectOptions { requeue: true })
            .await
            .unwrap();
        let _ = c.close(200, "bye".into()).await;
        body
    })
}

/// Certificates `scripts/dev-tls.sh` made: a CA and a server certificate it signed.
pub struct DevTls {
    /// The directory they are in (what `RabbitNode::start_tls` and `RedisNode::start_tls`
    /// take).
    pub dir: PathBuf,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// Runs `scripts/dev-tls.sh` into `dir`, for localhost, 127.0.0.1 and `names`.
pub fn dev_tls(dir: &Path, names: &[&str]) -> DevTls {
    let out = Command::new("bash")
        .arg(workspace().join("scripts/dev-tls.sh"))
        .arg(dir)
        .args(names)
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{out:?}");
    let file = |f: &str| dir.join(f).display().to_string();
    DevTls {
        dir: dir.to_path_buf(),
        ca: file("ca.pem"),
        cert: file("server.pem"),
        key: file("server.key"),
    }
}

/// Acts as a broadcaster (and as an attacker) directly on the broker.
pub struct Injector {
    rt: tokio::runtime::Runtime,
    channel: lapin::Channel,
    /// The user it logs in as, which it names in each message's `user-id` (as every
    /// Castwork process does; the broker refuses any other).
    user: String,
}

impl Injector {
    pub fn new(amqp_url: &str) -> Injector {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let channel = rt.block_on(async {
            let c = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = c.create_channel().await.unwrap();
            ch.confirm_select(Default::default()).await.unwrap();
            std::mem::forget(c);
            ch
        });
        let user = amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .unwrap()
            .authority
            .userinfo
            .username;
        Injector { rt, channel, user }
    }

    /// Publishes an ingest message, as a broadcaster does.
    pub fn ingest(&self, msg: &castwork_protocol::IngestMessage) {
        self.publish(
            castwork_protocol::INGEST_EXCHANGE,
            "ingest",
            &castwork_protocol::encode(msg),
        );
    }

    /// Declares a durable classic queue and binds it to `exchange` with `key` (as an older
    /// Castwork's topology did).
    pub fn declare_bound(&self, queue: &str, exchange: &str, key: &str) {
        self.rt.block_on(async {
            self.channel
                .queue_declare(
                    queue.into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .unwrap();
            self.channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    Default::default(),
                    Default::default(),
                )
                .await
                .unwrap();
        });
    }

    pub fn publish(&self, exchange: &str, key: &str, body: &[u8]) {
        self.rt.block_on(async {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    Default::default(),
                    body,
                    lapin::BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_user_id(self.user.as_str().into()),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        });
    }
}

/// Cuts `secs` of 640x360 video with AAC into 2 s MPEG-TS segments, as an HTTP-push client
/// (go-livepeer's broadcaster) would send them.
pub fn pre_cut_segments(dir: &Path, secs: u32) -> Vec<std::path::PathBuf> {
    let pattern = dir.join("seg%d.ts");
    let mut args = live_source_args(secs);
    args.extend(
        [
            "-f",
            "segment",
            "-segment_time",
            "2",
            "-segment_format",
            "mpegts",
        ]
        .map(String::from),
    );
    args.push(pattern.display().to_string());
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut v: Vec<_> = (0..)
        .map(|i| dir.join(format!("seg{i}.ts")))
        .take_while(|p| p.exists())
        .collect();
    v.truncate(50);
    v
}

/// Waits for a publisher to exit; returns its success and stderr.
pub fn finish(mut child: std::process::Child, timeout: Duration) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("publisher did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tiny HTTP server for auth webhooks: answers each request with `respond(its body)` as
/// (status, body). Returns its URL.
pub fn webhook(respond: impl Fn(&str) -> (u16, String) + Send + 'static) -> String {
    webhook_with_head(move |_, body| respond(body))
}

/// [`webhook`], with the request's head (its request line and headers) for `respond` too.
pub fn webhook_with_head(respond: impl Fn(&str, &str) -> (u16, String) + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            // Read the head and the body (small JSON).
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&got);
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let (status, answer) = respond(head, body);
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    format!("http://{addr}/auth")
}

impl Cluster {
    /// `broadcaster push FILE --stream NAME ARGS...` without `--wait`, run in `dir` (the
    /// current directory, which a relative `file://` store resolves against) with
    /// `env` on top of the cluster's.
    pub fn push_from(
        &self,
        dir: &Path,
        file: &Path,
        stream: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut cmd = Command::new(bin("broadcaster"));
        self.envs(&mut cmd);
        cmd.env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(dir)
            .arg("push")
            .arg(file)
            .args(["--stream", stream, "--admit-timeout-secs", "60"])
            .args(args);
        cmd.output().expect("broadcaster runs")
    }

    /// The logs of every process of one binary (`orchestrator`, `worker`, `broadcaster`).
    pub fn logs_of(&self, name: &str) -> String {
        let mut out = String::new();
        if let Ok(d) = std::fs::read_dir(self.dir.path()) {
            for e in d.flatten() {
                let file = e.file_name().to_string_lossy().to_string();
                if file.starts_with(&format!("{name}-")) && file.ends_with(".log") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

/// The sum of a metric's series in a Prometheus text page whose labels contain every one
/// of `labels` (e.g. `cause="refused"`); a series without labels counts when none are
/// asked for.
pub fn metric_total(page: &str, name: &str, labels: &[&str]) -> u64 {
    page.lines()
        .filter(|l| {
            let rest = l.strip_prefix(name).unwrap_or("");
            (rest.starts_with('{') || (rest.starts_with(' ') && labels.is_empty()))
                && labels.iter().all(|x| rest.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The whole number that follows the first `needle` in `text` (a figure in a message).
pub fn number_after(text: &str, needle: &str) -> i64 {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in {text}"))
        + needle.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {needle:?} in {text}"))
}

/// `orchestrator --redis-url URL ledger ARGS...`: whether it succeeded, and its stdout
/// (when it did) or stderr, trimmed.
pub fn ledger_command(redis_url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("orchestrator"))
        .args(["--redis-url", redis_url, "ledger"])
        .args(args)
        .output()
        .expect("orchestrator runs");
    let text = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(text).trim().to_string(),
    )
}
