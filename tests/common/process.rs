//! `idtrail serve` as a child process, for the tests that kill it: start on fixed ports over one
//! data directory, poll its HTTP endpoints, SIGKILL or SIGTERM it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The ports a server keeps across restarts (exporters keep their endpoint).
#[derive(Clone, Copy)]
pub struct Ports {
    pub grpc: u16,
    pub http: u16,
    /// Arrow Flight SQL.
    pub flight: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            grpc: free_port(),
            http: free_port(),
            flight: free_port(),
        }
    }
}

/// A child process killed when dropped, so a failing test leaves no server behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already reaped after sigkill/sigterm: both calls then fail harmlessly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `idtrail serve` on `dir/data` with `dir/fp.key`, logging to `dir/log_name`, with
/// `settings` as `--set` overrides, and waits until it is ready.
pub fn start_server(dir: &Path, ports: Ports, log_name: &str, settings: &[&str]) -> KillOnDrop {
    start_server_with_env(dir, ports, log_name, settings, &[])
}

/// [`start_server`] with extra environment variables (`FAILPOINTS`, for one).
pub fn start_server_with_env(
    dir: &Path,
    ports: Ports,
    log_name: &str,
    settings: &[&str],
    env: &[(&str, &str)],
) -> KillOnDrop {
    let log = std::fs::File::create(dir.join(log_name)).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_idtrail"));
    command.envs(env.iter().copied());
    command
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--key-file")
        .arg(dir.join("fp.key"))
        .args(["--grpc-address", &format!("127.0.0.1:{}", ports.grpc)])
        .args(["--http-address", &format!("127.0.0.1:{}", ports.http)])
        .args([
            "--set",
            &format!("query.flight_sql_address=127.0.0.1:{}", ports.flight),
        ]);
    for setting in settings {
        command.args(["--set", setting]);
    }
    let child = KillOnDrop(
        command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn idtrail serve"),
    );
    wait_until(
        ports.http,
        "/readyz",
        Duration::from_secs(30),
        |status, _| status == 200,
    );
    child
}

/// Polls `path` on the HTTP port until `done(status, body)`; panics after `timeout`.
pub fn wait_until(http: u16, path: &str, timeout: Duration, done: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + timeout;
    let url = format!("http://127.0.0.1:{http}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    while Instant::now() < deadline {
        let finished = runtime.block_on(async {
            match reqwest::get(&url).await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    done(status, &body)
                }
                Err(_) => false,
            }
        });
        if finished {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting on {path}");
}

/// The value of an unlabelled (or fully labelled) metric line in Prometheus text.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

pub fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("reap");
}

pub fn sigterm(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

/// Starts `idtrail gen` against the gRPC port of `ports`, writing every acknowledged span id to
/// `ledger`, with `args` (rate, duration, batch size…) before the endpoint; its stdout (the JSON
/// summary) is piped.
pub fn spawn_generator(ports: Ports, ledger: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["gen", "--quiet"])
        .args(args)
        .args(["--endpoint", &format!("http://127.0.0.1:{}", ports.grpc)])
        .arg("--ledger")
        .arg(ledger)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn idtrail gen")
}
