//! Running the real `lakebase-proxy` binary in tests.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::net::free_port;

/// A running `lakebase-proxy` process, killed (by PID) when dropped.
pub struct ProxyProcess {
    child: Option<Child>,
    /// The TCP port it listens on (for its first target).
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl ProxyProcess {
    /// Starts the binary with `args` (targets and options; `--port` is added) and extra
    /// environment `env`, and waits until it accepts connections.
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> ProxyProcess {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lakebase-proxy"))
            .args(args)
            .arg(format!("--port={port}"))
            .env_remove("RUST_LOG")
            // Tests read the log as a default environment writes it.
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start lakebase-proxy");
        let mut proxy = ProxyProcess { child: Some(child), port, log };
        proxy.wait_until_listening();
        proxy
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("lakebase-proxy exited with {status}: {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "lakebase-proxy did not listen: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().expect("running").try_wait().unwrap().is_none()
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends SIGTERM and returns the exit status and the log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        let status = child.wait().unwrap();
        (status, self.log_text())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
