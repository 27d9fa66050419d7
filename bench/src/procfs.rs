//! What Linux's /proc tells about the processes in a run: which process serves a port, the CPU
//! time it and the bench itself used, and the CPUs each may run on. Only for servers on this
//! machine; elsewhere (or off Linux) every answer is `None` and the figures are left out.

use std::time::Duration;

/// Clock ticks per second in /proc's CPU times (USER_HZ: 100 on every Linux architecture this
/// runs on).
const TICKS_PER_SECOND: u64 = 100;

/// A process whose CPU use is followed through a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Process {
    pid: u32,
}

impl Process {
    /// The bench itself.
    pub(crate) fn this() -> Self {
        Self {
            pid: std::process::id(),
        }
    }

    /// The process listening on TCP `port` of this machine, if it can be found.
    pub(crate) fn listening_on(port: u16) -> Option<Self> {
        let inode = listening_inode(port)?;
        let wanted = format!("socket:[{inode}]");
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|link| link.to_str() == Some(&wanted)) {
                    return Some(Self { pid });
                }
            }
        }
        None
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// User plus system CPU time used so far, all threads.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name may hold spaces: count fields after its closing parenthesis.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_millis(
            (utime + stime) * 1000 / TICKS_PER_SECOND,
        ))
    }

    /// Its resident set size in bytes, now (`VmRSS`).
    pub(crate) fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// The CPUs it may run on, as Linux lists them ("1", "0-1").
    pub(crate) fn cpus(&self) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .map(|cpus| cpus.trim().to_owned())
    }
}

/// The inode of the socket listening on `port`, from /proc/net/tcp and tcp6.
fn listening_inode(port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    let port = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
                && local.ends_with(&port)
                && *state == LISTEN
            {
                return inode.parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listener_of_a_port_and_reads_cpu_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = Process::listening_on(port).expect("this process listens there");
        assert_eq!(found.pid(), std::process::id());
        assert!(found.cpu_time().is_some());
        assert!(!found.cpus().unwrap().is_empty());
        // Our own resident memory grows by what we touch.
        let before = found.resident_bytes().unwrap();
        let touched = vec![1u8; 64 << 20];
        let after = found.resident_bytes().unwrap();
        assert!(
            after >= before + (60 << 20),
            "{before} then {after} with 64 MiB touched"
        );
        drop(touched);
    }
}
