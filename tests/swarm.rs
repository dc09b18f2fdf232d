//! The stack on Docker Swarm with real containers: `docker/stack.yml` deployed on a one-node swarm (made by the
//! test if the machine has none, and left afterwards). Web replicas scale from 3 to 4 and all get traffic; a
//! rolling restart of `web`, an update to an app that cannot start (rolled back) and a `docker kill` of one task
//! under steady load fail no request; a second proxy
//! replica sees the same members; the stack is removed cleanly.
//!
//! Needs Docker Engine (CI runs as root). The routing mesh (ingress) does not work on these machines, so the
//! stack publishes in host mode; the test asks for free ports.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::containers::{build_image, get_host, root, run, stdout};
use common::http_get;

/// Longest wait for anything the swarm must do by itself (schedule a task, converge an update).
const SETTLE: Duration = Duration::from_secs(120);
const IMAGE: &str = "shoal:swarm-test";
/// `web`'s command in docker/stack.yml up to its app, which the test replaces with one that cannot start.
const WEB_ARGS: &str = "agent --service 0.0.0.0:3000 --join tasks.ha:7946 --check-path / --check-interval 1s --";

fn docker(args: &[&str]) -> String {
    stdout(run(Command::new("docker").args(args)))
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < SETTLE, "{what}: not within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A stack of its own on a swarm; on drop the stack, its secret and (if the test made it) the swarm go.
struct Stack {
    name: String,
    secret: String,
    /// The test made the swarm: leave it afterwards (and remove the gateway bridge it created, if it did).
    made_swarm: bool,
    made_gwbridge: bool,
}

impl Stack {
    fn deploy() -> Stack {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        let made_swarm = state != "active";
        let had_gwbridge = !docker(&["network", "ls", "-q", "--filter", "name=^docker_gwbridge$"]).is_empty();
        if made_swarm {
            docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        }
        let name = format!("shoalswarm{}", std::process::id());
        let stack = Stack { secret: format!("{name}_key"), name, made_swarm, made_gwbridge: !had_gwbridge };
        let key = stdout(run(Command::new(env!("CARGO_BIN_EXE_shoal")).arg("keygen")));
        let mut create = Command::new("docker")
            .args(["secret", "create", &stack.secret, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        create.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
        assert!(create.wait().unwrap().success(), "docker secret create");
        let file = root().join("docker/stack.yml");
        run(Command::new("docker")
            .args(["stack", "deploy", "--resolve-image", "never", "-c"])
            .arg(file)
            .arg(&stack.name)
            .env("SHOAL_IMAGE", IMAGE)
            .env("SHOAL_KEY_SECRET", &stack.secret)
            .env("SHOAL_PUBLISH_HTTP", "0")
            .env("SHOAL_PUBLISH_ADMIN", "0"));
        stack
    }

    fn service(&self, name: &str) -> String {
        format!("{}_{name}", self.name)
    }

    /// The running containers of `service`.
    fn containers(&self, service: &str) -> Vec<String> {
        let filter = format!("label=com.docker.swarm.service.name={}", self.service(service));
        let out = docker(&["ps", "-q", "--filter", &filter, "--filter", "status=running"]);
        out.lines().map(str::to_string).collect()
    }

    /// Where a container's port `target` is published on this machine.
    fn published(container: &str, target: u16) -> Option<SocketAddr> {
        let out = Command::new("docker").args(["port", container, &target.to_string()]).output().ok()?;
        let line = String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_string();
        let port: u16 = line.rsplit(':').next()?.parse().ok()?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The HTTP and admin addresses of every running proxy.
    fn proxies(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.containers("ha")
            .iter()
            .filter_map(|c| Some((Stack::published(c, 80)?, Stack::published(c, 1936)?)))
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["stack", "rm", &self.name]).output();
        let start = Instant::now();
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        while start.elapsed() < SETTLE {
            let left = Command::new("docker").args(["ps", "-aq", "--filter", &label]).output();
            let networks = Command::new("docker").args(["network", "ls", "-q", "--filter", &label]).output();
            let empty = |o: std::io::Result<Output>| o.map(|o| o.stdout.trim_ascii().is_empty()).unwrap_or(true);
            if empty(left) && empty(networks) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = Command::new("docker").args(["secret", "rm", &self.secret]).output();
        if self.made_swarm {
            let _ = Command::new("docker").args(["swarm", "leave", "--force"]).output();
            if self.made_gwbridge {
                let _ = Command::new("docker").args(["network", "rm", "docker_gwbridge"]).output();
            }
        }
    }
}

/// The servers a proxy's stats CSV shows UP.
fn up_servers(admin: SocketAddr) -> Vec<String> {
    let csv = http_get(admin, "/;csv", Duration::from_secs(5)).unwrap_or_default();
    let mut up: Vec<String> = csv
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > 17 && f[0] == "nodes" && f[1] != "BACKEND" && f[17] == "UP")
        .map(|f| f[1].to_string())
        .collect();
    up.sort();
    up
}

/// Waits until `n` distinct webapps answer through `proxy` within the last 4n answers; returns them.
fn wait_serving(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut recent: Vec<String> = Vec::new();
    wait_until(&format!("{n} web nodes serving through {proxy}"), || {
        if let Ok(host) = get_host(proxy, Duration::from_secs(3)) {
            recent.push(host);
        }
        if recent.len() > 4 * n {
            recent.remove(0);
        }
        let mut distinct = recent.clone();
        distinct.sort();
        distinct.dedup();
        (distinct.len() == n).then_some(distinct)
    })
}

#[test]
fn the_stack_scales_updates_and_survives_a_killed_task_without_a_failed_request() {
    build_image(IMAGE);
    let stack = Stack::deploy();

    let (proxy, admin) = wait_until("the proxy's published ports", || stack.proxies().first().copied());
    let three = wait_serving(proxy, 3);
    assert_eq!(three, ["web-1", "web-2", "web-3"], "nodes are named after their task slots");

    // Scale 3 -> 4: the new replica gets traffic by itself.
    let scaled = Instant::now();
    docker(&["service", "scale", "--detach", &format!("{}=4", stack.service("web"))]);
    wait_until("web-4 serving", || (get_host(proxy, Duration::from_secs(3)).ok()? == "web-4").then_some(()));
    eprintln!("docker service scale to the new replica's first request: {:?}", scaled.elapsed());
    wait_serving(proxy, 4);

    // Steady load, a new connection per request with a 3 s budget, through a rolling restart and a kill.
    let (ok, failed, stop) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match get_host(proxy, Duration::from_secs(3)) {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("failed request: {e}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            });
        }
        let web = stack.service("web");
        // `docker service update` waits until the update has converged.
        docker(&["service", "update", "--force", &web]);
        eprintln!(
            "rolling restart done: {} answered, {} failed",
            ok.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst)
        );
        // An update whose app cannot start: the agent would restart it for ever, but the image's health check
        // fails, so swarm never counts the new task running and rolls the update back; the old tasks serve on.
        let updated = Command::new("docker")
            .args(["service", "update", "--args", &format!("{WEB_ARGS} /nonexistent/app"), &web])
            .output()
            .expect("docker");
        let said = format!("{}{}", String::from_utf8_lossy(&updated.stdout), String::from_utf8_lossy(&updated.stderr));
        let state = || docker(&["service", "inspect", "--format", "{{.UpdateStatus.State}}", &web]);
        wait_until("the rollback", || (state() == "rollback_completed").then_some(()));
        eprintln!("docker service update of a broken app: {:?} {said}", updated.status.code());
        eprintln!(
            "broken update rolled back: {} answered, {} failed",
            ok.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst)
        );
        let victim = stack.containers("web").first().cloned().expect("a web task");
        docker(&["kill", &victim]);
        // Swarm replaces the task; the load goes on until the replacement serves too.
        wait_serving(proxy, 4);
        let served = ok.load(Ordering::SeqCst);
        wait_until("load after the kill", || (ok.load(Ordering::SeqCst) > served + 100).then_some(()));
        stop.store(true, Ordering::SeqCst);
    });
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    eprintln!("rolling restart and a killed task under load: {ok} answered, {failed} failed");
    assert!(ok > 500, "too little load to tell: {ok}");
    assert_eq!(failed, 0, "requests failed during the rolling restart or the kill");

    // A second proxy replica joins through tasks.ha and routes to the same members.
    docker(&["service", "scale", "--detach", &format!("{}=2", stack.service("ha"))]);
    let proxies = wait_until("two proxies", || {
        let p = stack.proxies();
        (p.len() == 2).then_some(p)
    });
    let want = ["web-1", "web-2", "web-3", "web-4"];
    for (http, admin) in &proxies {
        wait_until("the same four servers UP on every proxy", || (up_servers(*admin) == want).then_some(()));
        assert_eq!(wait_serving(*http, 4), want);
    }
    assert!(proxies.iter().any(|(_, a)| *a == admin), "the first proxy is still there");
}
