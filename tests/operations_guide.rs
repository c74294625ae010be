//! The guide's commands (issue 5, item 6): every ```sh block of `docs/operations.md` is run,
//! in order, with `bash -euo pipefail` in one temporary working directory, with the
//! `virfed` under test first on PATH and free ports in `API_PORT`, `PEER_PORT`, ... So the
//! operator guide cannot rot: a command that changes or stops working fails here, with the
//! block's text and its output.
//!
//! Each block runs in its own bash process; the shell variables and functions a block
//! defines are carried to the next one (a state file written on exit, sourced on start), as
//! if the operator had typed the guide into one terminal. Blocks tagged ```text or
//! ```console are documentation only (systemd, package installs) and are not run; a block
//! without a tag is refused, so nothing runnable can hide from this test. Nodes the guide
//! starts in the background record their pid in `*.pid` files; whatever is left of them is
//! stopped when the test ends, pass or fail.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a single block may take before it is killed and the test fails.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(45);

/// The guide's port variables, each given a free port.
const PORT_VARS: [&str; 7] =
    ["API_PORT", "PEER_PORT", "HTTP_PORT", "UT_API_PORT", "UT_PEER_PORT", "UT_HTTP_PORT", "COORD_PORT"];

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence in the guide.
    line: usize,
    tag: String,
    text: String,
}

/// Every top-level fenced block of a Markdown text, with its info string.
fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        match open.take() {
            None => {
                if let Some(tag) = line.strip_prefix("```") {
                    open = Some(Block { line: i + 1, tag: tag.trim().to_string(), text: String::new() });
                }
            }
            Some(mut block) => {
                if line.trim_end() == "```" {
                    blocks.push(block);
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                    open = Some(block);
                }
            }
        }
    }
    assert!(open.is_none(), "docs/operations.md: a fenced block is never closed");
    blocks
}

fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all are chosen, so the ports differ.
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// Stops what the guide left running: every pid recorded in a `*.pid` file in the working
/// directory (the guide's nodes and dashboard), then removes the directories.
struct Cleanup {
    work: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.work) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid") {
                if let Ok(pid) = fs::read_to_string(&path) {
                    let pid = pid.trim();
                    if !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) {
                        let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
                    }
                }
            }
        }
    }
}

/// The bash preamble of every block: source the state of the blocks before, and write the
/// state (variables not in the pristine shell, and functions) when the block exits.
const PREAMBLE: &str = r#"
if [ -f "$__GUIDE_STATE" ]; then . "$__GUIDE_STATE"; fi
__guide_save() {
  local __v
  {
    for __v in $(compgen -v); do
      case "$__v" in __*|_|BASH*|PIPESTATUS|FUNCNAME|PWD|OLDPWD|SHLVL|COLUMNS|LINES) continue ;; esac
      case " $__GUIDE_BASELINE " in *" $__v "*) continue ;; esac
      declare -p "$__v" 2>/dev/null || true
    done
    declare -f
  } >"$__GUIDE_STATE.next"
}
trap __guide_save EXIT
"#;

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn every_command_in_the_operations_guide_runs() {
    let started = Instant::now();
    let guide_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
    let guide = fs::read_to_string(&guide_path).expect("docs/operations.md");
    let blocks = fenced_blocks(&guide);
    for b in &blocks {
        assert!(
            matches!(b.tag.as_str(), "sh" | "text" | "console"),
            "docs/operations.md line {}: fenced block tagged {:?}; use ```sh (run by this test) or ```text / \
             ```console (not run)",
            b.line,
            b.tag
        );
    }
    let sh: Vec<&Block> = blocks.iter().filter(|b| b.tag == "sh").collect();
    assert!(sh.len() >= 20, "the guide should hold its commands in ```sh blocks; found {}", sh.len());

    let binary = PathBuf::from(env!("CARGO_BIN_EXE_virfed"));
    let bin_dir = binary.parent().expect("binary directory").to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    // `virfed ca renew` arrives with issue 5 item 4; until the binary has it, the blocks
    // that use it are skipped, and said so.
    let has_renew = Command::new(&binary)
        .args(["ca", "renew", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());

    let work_dir = tempfile::tempdir().expect("tempdir");
    let meta_dir = tempfile::tempdir().expect("tempdir");
    let work = work_dir.path().to_path_buf();
    let _cleanup = Cleanup { work: work.clone() };
    let state = meta_dir.path().join("state");
    let ports = free_ports(PORT_VARS.len());

    let command = |program: &str| {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars() {
            if key.starts_with("VIRFED_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(&work).env("PATH", &path).env("VIRFED_LOG", "info").env("__GUIDE_STATE", &state);
        for (var, port) in PORT_VARS.iter().zip(&ports) {
            cmd.env(var, port.to_string());
        }
        cmd
    };
    let baseline = command("bash").args(["-c", "compgen -v"]).output().expect("run bash");
    assert!(baseline.status.success(), "bash compgen failed");
    let baseline = String::from_utf8_lossy(&baseline.stdout).split_whitespace().collect::<Vec<_>>().join(" ");

    let (mut ran, mut skipped) = (0, 0);
    for (n, block) in sh.iter().enumerate() {
        if block.text.contains("virfed ca renew") && !has_renew {
            println!(
                "SKIPPED block {} (docs/operations.md line {}): `virfed ca renew` is not in this binary yet \
                 (`virfed ca renew --help` fails); the step stays documented",
                n + 1,
                block.line
            );
            skipped += 1;
            continue;
        }
        let script = meta_dir.path().join(format!("block-{:02}.sh", n + 1));
        fs::write(&script, format!("{PREAMBLE}\n{}", block.text)).expect("write script");
        let out_path = meta_dir.path().join(format!("block-{:02}.out", n + 1));
        let out = fs::File::create(&out_path).expect("output file");
        let t = Instant::now();
        let mut child = command("bash")
            .args(["-euo", "pipefail"])
            .arg(&script)
            .env("__GUIDE_BASELINE", &baseline)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn bash");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if t.elapsed() > BLOCK_TIMEOUT {
                // The block's process group: bash and whatever it started and still runs.
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        let ok = status.is_some_and(|s| s.success());
        if !ok {
            let outcome = match status {
                Some(s) => format!("failed ({s})"),
                None => format!("timed out after {BLOCK_TIMEOUT:?}"),
            };
            panic!(
                "docs/operations.md block {} (line {}) {outcome}\n--- block ---\n{}--- output ---\n{output}\n\
                 --- rotterdam.log (tail) ---\n{}\n--- utrecht.log (tail) ---\n{}\n",
                n + 1,
                block.line,
                block.text,
                tail(&work.join("rotterdam.log"), 30),
                tail(&work.join("utrecht.log"), 30),
            );
        }
        fs::rename(state.with_extension("next"), &state).expect("the block's state file");
        println!("ok block {} (line {}) in {:?}\n{output}", n + 1, block.line, t.elapsed());
        ran += 1;
    }
    assert_eq!(ran + skipped, sh.len(), "every ```sh block runs");
    assert!(skipped == 0 || !has_renew, "only blocks needing `virfed ca renew` may be skipped");
    println!("{ran} blocks ran, {skipped} skipped, in {:?}", started.elapsed());
}
