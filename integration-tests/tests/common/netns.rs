//! Separate network hosts on one machine: network namespaces joined by a bridge, each
//! reaching the test machine only over its veth link (their loopback is their own, so
//! nothing on the machine's 127.0.0.1 is in reach). A host's link can be cut and restored.
//! Needs root (`ip netns`), as CI has.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {} (network namespaces need root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge on the test machine (`ADDRESS.1`) that hosts attach to.
pub struct Network {
    bridge: String,
    /// The first three octets of the /24, e.g. `10.77.3`.
    prefix: String,
    tag: String,
    hosts: u8,
}

impl Network {
    pub fn new() -> Network {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let prefix = format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 250 + 1);
        let bridge = format!("cwb{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        // Hosts talk to each other across the bridge. Where bridged traffic goes through
        // iptables (br_netfilter, as a Docker engine sets it up, with the FORWARD policy
        // DROP), let this bridge's own traffic through.
        let _ = Command::new("iptables")
            .args([
                "-I", "FORWARD", "1", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ])
            .output();
        Network {
            bridge,
            prefix,
            tag,
            hosts: 0,
        }
    }

    /// The test machine's address on this network.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A new host on the network.
    pub fn host(&mut self) -> Host {
        self.hosts += 1;
        let n = self.hosts;
        let ns = format!("cw{}h{n}", self.tag);
        let outside = format!("cw{}v{n}", self.tag);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &outside, "master", &self.bridge]);
        ip(&["link", "set", &outside, "up"]);
        let address = format!("{}.{}", self.prefix, n + 1);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Host {
            ns,
            outside,
            address,
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args([
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// One network namespace with its link to the bridge.
pub struct Host {
    pub ns: String,
    /// The link's end on the test machine's side (what a cut takes down).
    outside: String,
    pub address: String,
}

impl Host {
    /// A command that runs `program` on this host.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// Takes the host's link down (`up: false`) or back up: packets stop both ways, as a
    /// pulled cable; TCP connections stall rather than close.
    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.outside, if up { "up" } else { "down" }]);
    }

    /// Whether a TCP connection from this host to `addr` succeeds.
    pub fn reaches(&self, addr: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "timeout", "3", "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/{}/{}",
                addr.split(':').next().unwrap(),
                addr.split(':').nth(1).unwrap()
            ))
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.outside])
            .output();
    }
}

/// Forwards TCP connections from an address on the bridge to a service that listens on
/// the machine's loopback only (RabbitMQ here), byte for byte, as a router would.
pub struct Forward {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forward {
    pub fn start(listen_ip: &str, target: SocketAddr) -> Forward {
        let listener = TcpListener::bind((listen_ip, 0)).expect("bind the forward");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(inbound) = conn else { continue };
                let Ok(outbound) = TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Forward { addr, stop }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        match TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(_) => {}
        }
    }
}
