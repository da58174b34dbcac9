//! Baselines that run as processes of their own: this bench binary started again with a
//! hidden flag, so that their CPU time and memory are read from `/proc/<pid>` exactly as the
//! hub's. The child prints `listening <addr>` as its first line and exits when its stdin
//! closes, so it never outlives the bench.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};

use crate::Res;

/// A running baseline process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl Server {
    /// Starts `<this binary> <flag>` and reads its address from its first line.
    pub fn spawn(flag: &str) -> Res<Server> {
        Server::spawn_with_input(flag, "")
    }

    /// Like [`Server::spawn`], writing `input` to the child's stdin first (which stays open).
    pub fn spawn_with_input(flag: &str, input: &str) -> Res<Server> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg(flag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = child.id();
        if !input.is_empty() {
            use std::io::Write;
            let stdin = child.stdin.as_mut().ok_or("no stdin pipe")?;
            stdin.write_all(input.as_bytes())?;
            stdin.flush()?;
        }
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no stdout pipe")?;
        BufReader::new(out).read_line(&mut line)?;
        match line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
        {
            Some(addr) => Ok(Server { child, addr, pid }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{flag} did not start (it printed {line:?})").into())
            }
        }
    }

    /// The process's CPU time so far (all threads), in seconds.
    pub fn cpu(&self) -> f64 {
        crate::hub::cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(f64::NAN)
    }

    pub fn rss_kib(&self) -> Option<u64> {
        crate::hub::rss_kib(self.pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `main` of a baseline process: a multi-threaded runtime with the default number of
/// workers (as the hub's), `serve` given a listener on a free loopback port whose address it
/// must print as `listening <addr>`, and an exit when stdin closes.
pub fn serve_main<F, Fut>(name: &str, serve: F) -> ExitCode
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = Res<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = std::thread::Builder::new()
        .name(format!("{name}-stdin"))
        .spawn(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        serve(listener).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (children inherit it);
/// returns the new soft limit.
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(0),
    }
}
