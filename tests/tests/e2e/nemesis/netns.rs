//! A network namespace for one replica of a nemesis partition scenario: a veth pair with
//! private addresses, `iptables` rules inside the namespace to cut it off, and a guard that
//! removes all of it on drop (also when the test fails), named per run so parallel or leftover
//! runs cannot collide.
//!
//! Addressing: block `i` of `10.200.0.0/16` (a `/29`): `.1` on the host side is where the
//! backend, the HTTP upstream and the other replicas listen; `.2` inside is the namespaced
//! replica's; `.3` on the host side is nginx's source address (`proxy_bind`), so rules can
//! tell the clients' traffic from the other replicas'. Needs root (CAP_NET_ADMIN), `ip` and
//! `iptables`.

use std::net::Ipv4Addr;
use std::process::Command;

/// Namespaces this suite creates are named `mcpgnem-<pid of the test process>-<block>`.
const PREFIX: &str = "mcpgnem-";

/// Runs `ip` (or, with `ns`, a command inside the namespace); the error is its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e} (install iproute2 and iptables)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes namespaces left by runs whose process is gone (a SIGKILLed test cannot run its
/// guard); deleting the namespace destroys its veth pair and rules with it.
fn reap_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// One namespace with a veth pair to the host; removed on drop.
pub struct Netns {
    pub name: String,
    host_if: String,
    /// Host side: the backend, the HTTP upstream and the other replicas listen here.
    pub host: Ipv4Addr,
    /// Inside the namespace: the namespaced replica listens here.
    pub inside: Ipv4Addr,
    /// Host side: nginx connects to the replicas from here.
    pub nginx: Ipv4Addr,
}

impl Netns {
    /// Creates the namespace and the veth pair, addressed and up. Panics with the failing
    /// command's message if network namespaces cannot be used here.
    pub fn create() -> Self {
        reap_leftovers();
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let start = (pid as usize * 7919 + nanos as usize) % 8192;
        let in_use = addresses_in_use();
        for k in 0..8192 {
            let block = (start + k) % 8192;
            let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + block as u32 * 8;
            let (host, inside, nginx) = (
                Ipv4Addr::from(base + 1),
                Ipv4Addr::from(base + 2),
                Ipv4Addr::from(base + 3),
            );
            if [host, inside, nginx].iter().any(|a| in_use.contains(a)) {
                continue;
            }
            let (host_if, ns_if) = (format!("mnem{block}h"), format!("mnem{block}n"));
            // `ip link add` fails when the name exists: the name is this run's claim on the
            // block (another run holding it is skipped).
            if run(
                "ip",
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
                ],
            )
            .is_err()
            {
                continue;
            }
            let ns = Self {
                name: format!("{PREFIX}{pid}-{block}"),
                host_if,
                host,
                inside,
                nginx,
            };
            // From here on the guard removes whatever was made, also if a step fails.
            let steps: Vec<Vec<String>> = vec![
                vec!["netns".into(), "add".into(), ns.name.clone()],
                vec![
                    "link".into(),
                    "set".into(),
                    ns_if.clone(),
                    "netns".into(),
                    ns.name.clone(),
                ],
                vec![
                    "addr".into(),
                    "add".into(),
                    format!("{host}/29"),
                    "dev".into(),
                    ns.host_if.clone(),
                ],
                vec![
                    "addr".into(),
                    "add".into(),
                    format!("{nginx}/29"),
                    "dev".into(),
                    ns.host_if.clone(),
                ],
                vec!["link".into(), "set".into(), ns.host_if.clone(), "up".into()],
                vec![
                    "-n".into(),
                    ns.name.clone(),
                    "addr".into(),
                    "add".into(),
                    format!("{inside}/29"),
                    "dev".into(),
                    ns_if.clone(),
                ],
                vec![
                    "-n".into(),
                    ns.name.clone(),
                    "link".into(),
                    "set".into(),
                    ns_if.clone(),
                    "up".into(),
                ],
                vec![
                    "-n".into(),
                    ns.name.clone(),
                    "link".into(),
                    "set".into(),
                    "lo".into(),
                    "up".into(),
                ],
            ];
            for s in &steps {
                let args: Vec<&str> = s.iter().map(String::as_str).collect();
                if let Err(e) = run("ip", &args) {
                    panic!(
                        "network namespaces are not usable here (they need root or CAP_NET_ADMIN): {e}"
                    );
                }
            }
            return ns;
        }
        panic!("no free /29 block in 10.200.0.0/16 for a nemesis namespace");
    }

    /// `program` to be run inside the namespace (`ip netns exec`, which execs it: the child's
    /// pid is the program's, so signals reach it).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `iptables <args>` inside the namespace; panics with its error.
    pub fn iptables(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "iptables", "-w"];
        all.extend_from_slice(args);
        if let Err(e) = run("ip", &all) {
            panic!("{e}");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; deleting the namespace its rules.
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Every IPv4 address configured on this host's interfaces (root namespace).
fn addresses_in_use() -> Vec<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// The guard removes the namespace, its veth pair and its rules, and the addresses are usable
/// from both sides while it lives.
#[test]
fn a_namespace_is_reachable_and_removed_on_drop() {
    let ns = Netns::create();
    let (name, host_if) = (ns.name.clone(), ns.host_if.clone());
    let listener = std::net::TcpListener::bind((ns.host, 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let probe = |ns: &Netns| {
        ns.command(std::path::Path::new("bash"))
            .args(["-c", &format!("exec 3<>/dev/tcp/{}/{port}", ns.host)])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(probe(&ns), "the host side is reachable from inside");
    ns.iptables(&[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &ns.host.to_string(),
        "--dport",
        &port,
        "-j",
        "REJECT",
    ]);
    assert!(!probe(&ns), "a rule inside cuts it off");
    drop(ns);
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&name));
    let link = Command::new("ip")
        .args(["link", "show", &host_if])
        .output()
        .unwrap();
    assert!(!link.status.success(), "the veth pair is gone");
}
