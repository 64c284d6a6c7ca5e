//! Scenario mode: a shell command run at a given second of the measurement
//! window (a failover script, say), with what the bench started passed in
//! its environment:
//!
//! * `GTM_BENCH_TARGET` — the address under load;
//! * `GTM_BENCH_SIM_PID`, `GTM_BENCH_SIM_PORT`, `GTM_BENCH_SIM_DIR`,
//!   `GTM_BENCH_SIM_BIN` — the spawned simulator, if any (the binary is
//!   `gtm_bench` itself with a role flag when gtm_sim was not built:
//!   `$GTM_BENCH_SIM_BIN -p ... -D ...` works either way);
//! * `GTM_BENCH_PROXY_PID`, `GTM_BENCH_PROXY_DIR`, `GTM_BENCH_PROXY_BIN` —
//!   the spawned proxy, if any (`$GTM_BENCH_PROXY_BIN reconnect -D
//!   $GTM_BENCH_PROXY_DIR -s HOST -t PORT` orders it to a new GTM, as
//!   `gtm_ctl reconnect -Z gtm_proxy` does).
//!
//! The command runs in its own process group; whatever it leaves running
//! (a restarted simulator, say) is stopped with the group when the run ends.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::spawn::die_with_parent;

/// How long the group gets after SIGTERM before SIGKILL.
const GROUP_GRACE: Duration = Duration::from_secs(3);

/// The command and when to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// From the start of the measurement window.
    pub at: Duration,
    pub command: String,
}

impl Event {
    /// `SECONDS=COMMAND`, e.g. `3s=kill -9 $GTM_BENCH_SIM_PID`.
    pub fn parse(s: &str) -> Result<Event, String> {
        let (at, command) = s.split_once('=').ok_or_else(|| format!("--at wants TIME=COMMAND, got {s:?}"))?;
        let at = super::parse_duration(at)?;
        if command.trim().is_empty() {
            return Err("--at: the command is empty".into());
        }
        Ok(Event { at, command: command.to_owned() })
    }
}

/// The running command.
#[derive(Debug)]
pub struct Running {
    child: Child,
    started: Instant,
    ended: Option<(Instant, String)>,
}

impl Running {
    pub fn start(ev: &Event, env: &[(String, String)]) -> io::Result<Running> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&ev.command).stdin(Stdio::null()).envs(env.iter().map(|(k, v)| (k, v)));
        cmd.process_group(0);
        die_with_parent(&mut cmd);
        log::info!("scenario: running `{}`", ev.command);
        Ok(Running { child: cmd.spawn()?, started: Instant::now(), ended: None })
    }

    /// Note the command's end if it has ended.
    pub fn poll(&mut self) {
        if self.ended.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.ended = Some((Instant::now(), status.to_string()));
            }
        }
    }

    /// How long it ran and how it ended (None while running).
    pub fn outcome(&self) -> (Option<Duration>, Option<String>) {
        match &self.ended {
            Some((t, s)) => (Some(t.saturating_duration_since(self.started)), Some(s.clone())),
            None => (None, None),
        }
    }

    /// Stop the whole process group (the command and anything it started).
    pub fn stop_group(&mut self) {
        self.poll();
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: signalling a process group we created; no memory is involved.
        let alive = |sig| unsafe { libc::kill(-pgid, sig) } == 0;
        if !alive(libc::SIGTERM) {
            let _ = self.child.try_wait();
            return;
        }
        let deadline = Instant::now() + GROUP_GRACE;
        while Instant::now() < deadline {
            let _ = self.child.try_wait();
            if !alive(0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!("scenario command's process group ignored SIGTERM; killing it");
        alive(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_group();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_time_and_command() {
        let e = Event::parse("2.5s=kill -9 $PID; sleep 1").unwrap();
        assert_eq!(e.at, Duration::from_millis(2500));
        assert_eq!(e.command, "kill -9 $PID; sleep 1");
        assert!(Event::parse("kill").is_err());
        assert!(Event::parse("3s=").is_err());
        assert!(Event::parse("soon=ls").is_err());
    }

    #[test]
    fn the_group_is_stopped_with_what_it_left_running() {
        let ev = Event { at: Duration::ZERO, command: "sleep 30 & echo $! > \"$OUT\"; exit 0".into() };
        let out = std::env::temp_dir().join(format!("gtm_bench.scenario.{}", std::process::id()));
        let mut r = Running::start(&ev, &[("OUT".into(), out.display().to_string())]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.outcome().0.is_none() && Instant::now() < deadline {
            r.poll();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(r.outcome().1.as_deref(), Some("exit status: 0"));
        let pid = std::fs::read_to_string(&out).unwrap().trim().to_owned();
        let _ = std::fs::remove_file(&out);
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        r.stop_group();
        let deadline = Instant::now() + Duration::from_secs(10);
        let gone = || std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"));
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(), "the background sleep was stopped with the group");
    }
}
