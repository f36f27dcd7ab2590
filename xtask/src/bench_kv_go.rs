//! The Go-client rows of `cargo xtask bench kv` (workloads `go-put` and `go-range`): the put
//! and linearizable range rows made with etcd's official Go client (clientv3 3.4) instead of
//! raft-kv's generated Rust client, so that neither system is judged only through this
//! project's client. The load program is `xtask/go/src/etcd-load/main.go` (ours, small); it
//! is built here in GOPATH mode against Debian's `golang-etcd-server-dev` sources, into the
//! target directory. Without Go the rows are left out with a one-line note.
//!
//! The program connects and warms up, prints `ready`, and waits for a line on stdin: the
//! members' CPU time is read around the timed part only. It then prints counts and latencies
//! (3 significant digits) as `key value` lines, parsed here into the same [`Load`] the Rust
//! rows fill.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::bench_kv::{Kind, RowCtx, Spec};
use crate::bench_kv_load::{Load, RowError};
use crate::bench_kv_ops::RANGE_KEYS;
use crate::cluster::target_dir;

/// Where Debian's `golang-etcd-server-dev` and its dependencies put their Go sources.
const GOCODE: &str = "/usr/share/gocode";
/// How long the program may take to connect, warm up (it retries for up to 30 s) and write
/// the range keys before it says `ready`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after the row's deadline the program may take to finish its last requests
/// (its request timeout is 10 s) and print its report.
const FINISH_GRACE: Duration = Duration::from_secs(15);
/// Bound on the report read from the program's stdout (its latency lines number at most a few
/// thousand: 3 significant digits per decade).
const MAX_REPORT_BYTES: u64 = 4 << 20;
/// Bound on the stderr kept to explain a failure.
const MAX_STDERR_BYTES: u64 = 4096;

/// Why the Go client cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("`go` not found ({0}): apt-get install golang-go golang-etcd-server-dev")]
    NoGo(std::io::Error),
    #[error(
        "{GOCODE}/src/go.etcd.io/etcd/clientv3 not found: apt-get install golang-etcd-server-dev"
    )]
    NoClient,
    #[error("`go build` of etcd-load failed ({0})")]
    Build(ExitStatus),
    #[error("cannot run {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("talking to etcd-load: {0}")]
    Io(#[from] std::io::Error),
    #[error("etcd-load {0}")]
    Timeout(&'static str),
    #[error("etcd-load failed ({0}): {1}")]
    Failed(ExitStatus, String),
    #[error("etcd-load printed a line this parser does not know: {0:?}")]
    Parse(String),
}

/// Builds the Go load program into `target/go/etcd-load` and returns its path.
pub fn build() -> Result<PathBuf, GoError> {
    std::process::Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .map_err(GoError::NoGo)?;
    if !Path::new(GOCODE)
        .join("src/go.etcd.io/etcd/clientv3")
        .is_dir()
    {
        return Err(GoError::NoClient);
    }
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("go");
    let out = target_dir().join("go");
    let binary = out.join("etcd-load");
    eprintln!("building the Go client (go build etcd-load, GOPATH mode)");
    let status = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg("etcd-load")
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOPATH", format!("{}:{GOCODE}", sources.display()))
        .env("GOCACHE", out.join("cache"))
        .status()
        .map_err(GoError::NoGo)?;
    if !status.success() {
        return Err(GoError::Build(status));
    }
    Ok(binary)
}

/// Runs a `go-put` or `go-range` row with the program at `binary`.
pub async fn go_row(ctx: &RowCtx<'_>, spec: Spec, binary: &Path) -> Result<Load, RowError> {
    run(ctx, spec, binary)
        .await
        .map_err(|e| RowError::Failed(e.to_string()))
}

async fn run(ctx: &RowCtx<'_>, spec: Spec, binary: &Path) -> Result<Load, GoError> {
    let op = if spec.kind == Kind::GoRange {
        "range"
    } else {
        "put"
    };
    let secs = ctx.deadline.saturating_duration_since(Instant::now());
    let mut child = Command::new(binary)
        .arg(format!("-endpoints={}", ctx.endpoints().join(",")))
        .arg(format!("-conns={}", spec.conns))
        .arg(format!("-clients={}", spec.clients))
        .arg(format!("-total={}", spec.ops))
        .arg(format!("-op={op}"))
        .arg(format!("-keys={RANGE_KEYS}"))
        .arg(format!("-secs={}ms", secs.as_millis()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| GoError::Spawn(binary.to_path_buf(), e))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(GoError::Timeout("has no pipes"));
    };
    // Read stderr all along (bounded), so the program never blocks on it.
    let errors = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut rest = stderr;
        let _ = (&mut rest)
            .take(MAX_STDERR_BYTES)
            .read_to_end(&mut kept)
            .await;
        let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
        String::from_utf8_lossy(&kept).trim().replace('\n', " / ")
    });
    let mut out = BufReader::new(stdout.take(MAX_REPORT_BYTES));
    let mut line = String::new();
    let ready = tokio::time::timeout(SETUP_TIMEOUT, out.read_line(&mut line)).await;
    if !matches!(ready, Ok(Ok(_))) || line.trim() != "ready" {
        let _ = child.start_kill();
        let status = child.wait().await?;
        return Err(GoError::Failed(status, errors.await.unwrap_or_default()));
    }
    let before = ctx.cpu();
    stdin.write_all(b"go\n").await?;
    let mut report = String::new();
    let finish = secs + FINISH_GRACE;
    let read = tokio::time::timeout(finish, out.read_to_string(&mut report)).await;
    if read.is_err() {
        let _ = child.start_kill();
        return Err(GoError::Timeout("did not finish within the row's bound"));
    }
    let mut load = Load::new();
    let client_cpu = parse_report(&report, &mut load)?;
    load.cpu = ctx.cpu_since(before).map(|mut cpu| {
        // The last figure is the client's: the Go program's, not this process's.
        if let (Some(last), Some(go)) = (cpu.last_mut(), client_cpu) {
            *last = go;
        }
        cpu
    });
    let status = child.wait().await?;
    if !status.success() {
        return Err(GoError::Failed(status, errors.await.unwrap_or_default()));
    }
    Ok(load)
}

/// Fills `load` from the program's report; returns the CPU seconds it says it used.
fn parse_report(report: &str, load: &mut Load) -> Result<Option<f64>, GoError> {
    let mut cpu = None;
    for line in report.lines().filter(|l| !l.is_empty()) {
        let bad = || GoError::Parse(line.to_string());
        let (key, value) = line.split_once(' ').ok_or_else(bad)?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| bad());
        let real = |v: &str| v.parse::<f64>().map_err(|_| bad());
        match key {
            "ops" => load.ops = number(value)?,
            "errors" => load.errors = number(value)?,
            "wrong" => load.wrong = number(value)?,
            "secs" => load.secs = real(value)?,
            "cut_short" => load.cut_short = value == "true",
            "cpu_secs" => cpu = Some(real(value)?),
            "first_error" => load.first_error = Some(value.to_string()),
            "first_wrong" => load.first_wrong = Some(value.to_string()),
            "lat" => {
                let (us, count) = value.split_once(' ').ok_or_else(bad)?;
                load.hist
                    .saturating_record_n(number(us)?.max(1), number(count)?);
            }
            _ => return Err(bad()),
        }
    }
    Ok(cpu)
}

#[cfg(test)]
mod tests {
    use super::{parse_report, GoError};
    use crate::bench_kv_load::Load;

    #[test]
    fn a_report_fills_the_load() {
        let mut load = Load::new();
        let report = "ops 4\nerrors 1\nwrong 0\nsecs 2.5\ncut_short false\ncpu_secs 0.75\n\
                      first_error context deadline exceeded\nlat 1000 3\nlat 0 1\n";
        let cpu = parse_report(report, &mut load).map_err(|e| e.to_string());
        assert_eq!(cpu, Ok(Some(0.75)));
        assert_eq!((load.ops, load.errors, load.wrong), (4, 1, 0));
        assert_eq!(load.secs, 2.5);
        assert!(!load.cut_short);
        assert_eq!(load.hist.len(), 4);
        assert_eq!(load.hist.max(), 1000);
        assert_eq!(load.hist.min(), 1);
        assert_eq!(
            load.first_error.as_deref(),
            Some("context deadline exceeded")
        );
    }

    #[test]
    fn an_unknown_line_is_an_error() {
        let mut load = Load::new();
        let r = parse_report("ops 1\nsurprise 2\n", &mut load);
        assert!(matches!(r, Err(GoError::Parse(l)) if l == "surprise 2"));
        assert!(matches!(
            parse_report("lat 5\n", &mut load),
            Err(GoError::Parse(_))
        ));
    }
}
