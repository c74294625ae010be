//! Nodes as real processes: `virfed node --config CONFIG` started from a binary, waited on
//! until it serves, killed with SIGKILL or stopped with SIGTERM, and the offline audit
//! check run on its store. The crash-cycle harness ([`super::faults`]) is built on it;
//! the binary is the caller's (a test's `CARGO_BIN_EXE_virfed`, or the running `virfed`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::pb::admin as admin_pb;
use crate::pb::admin::organisations_client::OrganisationsClient;
use crate::pki::{client_config, connect, Identity};

use super::fixture::RegionFiles;
use super::{fail, KitError, KitResult};

/// How long a node may take to serve after it was started.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// A `virfed` command with an environment of only what it needs: no `VIRFED_*` variable
/// of the caller's can change what it does.
pub fn virfed_command(binary: &Path, args: &[&str], log_level: &str) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(args).env_clear().env("VIRFED_LOG", log_level).kill_on_drop(true).stdin(Stdio::null());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// One `virfed node` child process, its output in a log file (appended across restarts).
pub struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `binary node --config config`, logging at `warn` to `log`; inside network
    /// namespace `netns` when one is given (`ip netns exec` execs the node, so the child is
    /// the node itself and a SIGKILL reaches it).
    pub fn spawn(binary: &Path, config: &Path, log: &Path, netns: Option<&str>) -> KitResult<NodeProcess> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = file.try_clone()?;
        let config = config.to_str().ok_or_else(|| KitError::Failed(format!("{} is not UTF-8", config.display())))?;
        let mut command = match netns {
            None => virfed_command(binary, &["node", "--config", config], "warn"),
            Some(ns) => {
                let binary =
                    binary.to_str().ok_or_else(|| KitError::Failed(format!("{} is not UTF-8", binary.display())))?;
                virfed_command(Path::new("ip"), &["netns", "exec", ns, binary, "node", "--config", config], "warn")
            }
        };
        let child = command
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| KitError::context(format!("starting {} node", binary.display()), e))?;
        Ok(NodeProcess { child, log: log.to_owned() })
    }

    /// The last `lines` lines of the node's log, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls the node's admin API as an operator until it answers; fails with the log if
    /// the process exits first or [`START_DEADLINE`] passes.
    pub async fn wait_serving(&mut self, files: &RegionFiles) -> KitResult<()> {
        let addr = files.config.listen.to_string();
        let tls = client_config(&files.client_material(Identity::Operator("ops".into()))?)?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                fail!("the node exited before serving ({status}); its log ends:\n{}", self.log_tail(20));
            }
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let channel = connect(&addr, "localhost", tls.clone()).await.map_err(|e| e.to_string())?;
                OrganisationsClient::new(channel)
                    .list_organisations(admin_pb::ListOrganisationsRequest {})
                    .await
                    .map_err(|s| s.to_string())
            })
            .await;
            let last = match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "an attempt timed out".to_owned(),
            };
            if started.elapsed() > START_DEADLINE {
                fail!(
                    "the node did not serve on {addr} within {START_DEADLINE:?} ({last}); its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// SIGKILL: the node gets no chance to flush or clean up.
    pub async fn kill_9(&mut self) -> KitResult<()> {
        self.child.start_kill()?;
        let status = self.wait_exit(Duration::from_secs(30)).await?;
        if status.success() {
            fail!("a node killed with SIGKILL exited cleanly");
        }
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit (the node drains and flushes).
    pub async fn terminate(&mut self) -> KitResult<()> {
        let Some(pid) = self.child.id() else { return Ok(()) };
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        if !sent.success() {
            fail!("kill -TERM {pid} failed");
        }
        let status = self.wait_exit(Duration::from_secs(60)).await?;
        if !status.success() {
            fail!("the node exited with {status} after SIGTERM; its log ends:\n{}", self.log_tail(20));
        }
        Ok(())
    }

    async fn wait_exit(&mut self, within: Duration) -> KitResult<std::process::ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => fail!("the node did not exit within {within:?}; its log ends:\n{}", self.log_tail(20)),
        }
    }
}

/// `virfed audit verify --config CONFIG` on a stopped node's store: `Ok` with what it
/// printed when the chain verifies, `Err` with its output when not.
pub async fn audit_verify(binary: &Path, config: &Path) -> KitResult<String> {
    let config = config.to_str().ok_or_else(|| KitError::Failed(format!("{} is not UTF-8", config.display())))?;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        virfed_command(binary, &["audit", "verify", "--config", config], "warn").output(),
    )
    .await
    .map_err(|_| KitError::Failed("virfed audit verify did not finish within 120 s".into()))??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        fail!("virfed audit verify failed ({}): {}", out.status, text.trim());
    }
    Ok(text.trim().to_owned())
}
