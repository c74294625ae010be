//! Real network faults between real node processes (issue 11, part 2): one Linux network
//! namespace per node (`ip netns`), each with a veth pair onto one bridge in the caller's
//! namespace, and faults put on the links between them with nftables and `tc`.
//!
//! The addresses are a private /24 of this run's own (`10.219.N.0/24`); the caller's side
//! of the bridge is `.254`, node `i` is `.(i+1)`. Every fault is a rule inside a node's
//! namespace that matches only the address of the node at the other end of the link, so
//! only the namespaces' own addresses are ever affected: the caller's traffic to a node
//! (the clients, the coordinator's `GetStatus`) and everything outside the namespaces pass
//! untouched.
//!
//! The kernel this runs on has no `sch_netem` (checked: `tc qdisc add … netem` answers
//! "unknown qdisc"), so the faults are built from what it has:
//!
//! - **loss**: `nft … numgen random mod 100 < P drop`, each way;
//! - **duplication**: `nft … numgen random mod 100 < P dup to <peer>`: the packet and a
//!   copy both go out, each way;
//! - **reordering**: an HTB root qdisc with a fast class and a slow one; `nft … numgen
//!   random … meta priority set 1:20` sends a random share of the packets to the slow class,
//!   where they queue behind the bottleneck while later packets overtake them;
//! - **delay**: every packet to the peer through the slow class, a narrow link whose queue
//!   is the delay (a bottleneck's queueing delay, not netem's fixed one);
//! - **partition**: every packet to and from the peer dropped, in and out, both ends (a
//!   black hole: no reset, no unreachable, as a cut line looks), until healed.
//!
//! [`Netns`] removes its namespaces and bridge when dropped. Creating it needs root (or
//! `CAP_NET_ADMIN`), `ip` (iproute2) and `nft` (nftables); [`ensure_tools`] installs the
//! two Debian packages where missing, and every failure says what was missing and how to
//! get it — never a silent pass.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::{fail, KitResult};

/// A fault on the link between two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// This percentage of packets dropped, each way.
    Loss(u8),
    /// This percentage of packets sent twice, each way.
    Duplicate(u8),
    /// This percentage of packets held back in a narrow queue while the rest overtake.
    Reorder(u8),
    /// Every packet through a link of this many kilobits per second.
    Slow(u32),
    /// Nothing passes either way.
    Partition,
}

impl NetFault {
    /// One of each, in the order a run cycles through them.
    pub const ALL: [NetFault; 5] =
        [NetFault::Loss(25), NetFault::Duplicate(30), NetFault::Reorder(30), NetFault::Slow(256), NetFault::Partition];
}

impl std::fmt::Display for NetFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetFault::Loss(p) => write!(f, "{p}% packet loss"),
            NetFault::Duplicate(p) => write!(f, "{p}% of packets duplicated"),
            NetFault::Reorder(p) => write!(f, "{p}% of packets reordered"),
            NetFault::Slow(kbit) => write!(f, "a {kbit} kbit/s bottleneck"),
            NetFault::Partition => write!(f, "a full partition"),
        }
    }
}

/// Runs `program args…`, failing with its output when it exits non-zero.
fn run(program: &str, args: &[&str], input: Option<&str>) -> KitResult<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| super::KitError::context(format!("running {program}"), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        fail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    Command::new(program).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Makes sure `ip` and `nft` are here, installing Debian's `iproute2` and `nftables`
/// (as root, with apt-get) where one is missing. `progress` hears about an install.
pub fn ensure_tools(mut progress: impl FnMut(&str)) -> KitResult<()> {
    if have("ip") && have("nft") {
        return Ok(());
    }
    progress("network faults: `ip` or `nft` is missing; installing Debian's iproute2 and nftables");
    let apt = |args: &[&str]| -> KitResult<String> {
        let mut all = vec!["-o", "DPkg::Lock::Timeout=600", "-q"];
        all.extend_from_slice(args);
        run("apt-get", &all, None)
    };
    let install = ["install", "-y", "--no-install-recommends", "iproute2", "nftables"];
    if let Err(first) = apt(&install) {
        apt(&["update"]).and_then(|_| apt(&install)).map_err(|second| {
            super::KitError::Failed(format!(
                "the network-fault runs need `ip` (iproute2) and `nft` (nftables) and could not install them \
                 ({first}; after apt-get update: {second}). Install them by hand (as root: apt-get install \
                 iproute2 nftables) and run again"
            ))
        })?;
    }
    if !(have("ip") && have("nft")) {
        fail!("apt-get installed iproute2 and nftables, but `ip -V` or `nft -V` still does not run");
    }
    Ok(())
}

/// Namespaces for `n` nodes on one bridge, removed on drop.
pub struct Netns {
    tag: String,
    subnet: u8,
    names: Vec<String>,
    bridge: String,
    /// Links with a fault on them now (indices, lower first).
    faulted: std::sync::Mutex<Vec<(usize, usize)>>,
}

impl Netns {
    /// Creates the namespaces, veths and bridge for `n` nodes (at most 200). Fails with
    /// why and what to do when this machine cannot (no root, no namespaces, no tools).
    pub fn create(n: usize) -> KitResult<Netns> {
        if n == 0 || n > 200 {
            fail!("between 1 and 200 namespaces, not {n}");
        }
        // A tag unique to this process: names and the subnet cannot collide with another
        // run on the machine (a second test binary, a bench beside a test).
        let pid = std::process::id();
        let tag = format!("vf{}", pid % 100_000);
        let subnet = (pid % 250 + 1) as u8;
        let mut net = Netns {
            bridge: format!("{tag}br"),
            names: (0..n).map(|i| format!("{tag}n{i}")).collect(),
            tag,
            subnet,
            faulted: Default::default(),
        };
        if let Err(e) = net.build() {
            let why = e.to_string();
            net.remove();
            let hint = if why.contains("Operation not permitted") || why.contains("Permission denied") {
                "this needs root (or CAP_NET_ADMIN) on a kernel that allows network namespaces; run as root"
            } else {
                "this machine could not set up network namespaces with veth and a bridge"
            };
            fail!("cannot create the network-fault topology: {why}. {hint}");
        }
        Ok(net)
    }

    fn build(&mut self) -> KitResult<()> {
        // Left over by a killed run of a process with the same id.
        let _ = run("ip", &["link", "del", &self.bridge], None);
        for name in &self.names {
            let _ = run("ip", &["netns", "del", name], None);
        }
        let host = format!("{}/24", self.host_address());
        run("ip", &["link", "add", &self.bridge, "type", "bridge"], None)?;
        run("ip", &["addr", "add", &host, "dev", &self.bridge], None)?;
        run("ip", &["link", "set", &self.bridge, "up"], None)?;
        for (i, name) in self.names.iter().enumerate() {
            let outside = format!("{}h{i}", self.tag);
            let address = format!("{}/24", self.address(i));
            run("ip", &["netns", "add", name], None)?;
            run("ip", &["link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", name], None)?;
            run("ip", &["link", "set", &outside, "master", &self.bridge], None)?;
            run("ip", &["link", "set", &outside, "up"], None)?;
            run("ip", &["-n", name, "addr", "add", &address, "dev", "eth0"], None)?;
            run("ip", &["-n", name, "link", "set", "eth0", "up"], None)?;
            run("ip", &["-n", name, "link", "set", "lo", "up"], None)?;
            // The fault tables, empty: an HTB root with a fast default class and the slow
            // class reordering and delay send packets to, and an nft table whose chains the
            // faults fill.
            let tc = |args: &[&str]| -> KitResult<String> {
                let mut all = vec!["-n", name];
                all.extend_from_slice(args);
                run("tc", &all, None)
            };
            tc(&["qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10", "r2q", "1000"])?;
            tc(&["class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit"])?;
            self.nft(i, "table ip virfed {\n chain out { type filter hook output priority 0; }\n chain in { type filter hook input priority 0; }\n}\n")?;
        }
        Ok(())
    }

    fn nft(&self, i: usize, script: &str) -> KitResult<String> {
        run("ip", &["netns", "exec", &self.names[i], "nft", "-f", "-"], Some(script))
    }

    /// The address of the caller's end of the bridge.
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 219, self.subnet, 254)
    }

    /// Node `i`'s address in its namespace.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 219, self.subnet, i as u8 + 1)
    }

    /// Node `i`'s namespace.
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Puts `fault` on the link between nodes `a` and `b`, both ways. One fault per link.
    pub fn apply(&self, a: usize, b: usize, fault: NetFault) -> KitResult<()> {
        if a == b || a >= self.names.len() || b >= self.names.len() {
            fail!("no link between nodes {a} and {b}");
        }
        let link = (a.min(b), a.max(b));
        {
            let mut faulted = self.faulted.lock().unwrap_or_else(|p| p.into_inner());
            if faulted.contains(&link) {
                fail!("the link between nodes {a} and {b} already has a fault; heal it first");
            }
            faulted.push(link);
        }
        for (from, to) in [(a, b), (b, a)] {
            let peer = self.address(to);
            let rules = match fault {
                NetFault::Loss(p) => {
                    format!("add rule ip virfed out ip daddr {peer} numgen random mod 100 < {p} drop\n")
                }
                NetFault::Duplicate(p) => {
                    format!("add rule ip virfed out ip daddr {peer} numgen random mod 100 < {p} dup to {peer} device eth0\n")
                }
                NetFault::Reorder(p) => {
                    self.slow_class(from, 2_000)?;
                    format!(
                        "add rule ip virfed out ip daddr {peer} numgen random mod 100 < {p} meta priority set 1:20\n"
                    )
                }
                NetFault::Slow(kbit) => {
                    self.slow_class(from, kbit)?;
                    format!("add rule ip virfed out ip daddr {peer} meta priority set 1:20\n")
                }
                NetFault::Partition => {
                    format!("add rule ip virfed out ip daddr {peer} drop\nadd rule ip virfed in ip saddr {peer} drop\n")
                }
            };
            self.nft(from, &rules)?;
        }
        Ok(())
    }

    /// (Re)creates node `i`'s slow class at `kbit` kilobits per second.
    fn slow_class(&self, i: usize, kbit: u32) -> KitResult<()> {
        let rate = format!("{kbit}kbit");
        let mut args = vec!["-n", &self.names[i], "class", "replace", "dev", "eth0", "parent", "1:", "classid", "1:20"];
        args.extend_from_slice(&["htb", "rate", &rate, "ceil", &rate]);
        run("tc", &args, None)?;
        Ok(())
    }

    /// Takes every fault off the link between `a` and `b`: the rules naming the other end
    /// go, so the link is as it was.
    pub fn heal(&self, a: usize, b: usize) -> KitResult<()> {
        let link = (a.min(b), a.max(b));
        self.faulted.lock().unwrap_or_else(|p| p.into_inner()).retain(|l| *l != link);
        for (from, to) in [(a, b), (b, a)] {
            let peer = self.address(to).to_string();
            let listing =
                run("ip", &["netns", "exec", &self.names[from], "nft", "-a", "list", "table", "ip", "virfed"], None)?;
            let mut chain = "";
            let mut script = String::new();
            for line in listing.lines() {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("chain ") {
                    chain = rest.split_whitespace().next().unwrap_or_default();
                } else if line.contains(&format!(" {peer} ")) || line.contains(&format!(" {peer}\t")) {
                    if let Some(handle) = line.rsplit("# handle ").next().filter(|h| h.parse::<u64>().is_ok()) {
                        script.push_str(&format!("delete rule ip virfed {chain} handle {handle}\n"));
                    }
                }
            }
            if !script.is_empty() {
                self.nft(from, &script)?;
            }
        }
        Ok(())
    }

    /// The nft rules on node `i` now, for a failure message.
    pub fn rules(&self, i: usize) -> String {
        run("ip", &["netns", "exec", &self.names[i], "nft", "list", "table", "ip", "virfed"], None)
            .unwrap_or_else(|e| e.to_string())
    }

    fn remove(&self) {
        for name in &self.names {
            let _ = run("ip", &["netns", "del", name], None);
        }
        let _ = run("ip", &["link", "del", &self.bridge], None);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}
