//! What a run prints.

use hdrhistogram::Histogram;

/// The figures of one target's run.
pub(crate) struct Outcome {
    pub(crate) name: &'static str,
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    /// Latency of successful operations, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// CPU time per operation of the server and of the load generator, and where each ran,
    /// when /proc tells.
    pub(crate) cpu: Option<CpuUse>,
}

/// CPU time per operation on each side of a run.
#[derive(Debug, Clone)]
pub(crate) struct CpuUse {
    /// The server's process id and CPU time per operation, in µs, if it was found.
    pub(crate) server: Option<(u32, f64, String)>,
    /// The load generator's CPU time per operation, in µs, and its CPUs.
    pub(crate) client: (f64, String),
}

impl CpuUse {
    pub(crate) fn line(&self, name: &str) -> String {
        let server = match &self.server {
            Some((pid, micros, cpus)) => {
                format!("server {micros:.2} µs (pid {pid}, CPUs {cpus})")
            }
            None => "server unknown (not a local process)".to_owned(),
        };
        format!(
            "{name:<9} CPU per op: {server}, load generator {:.2} µs (CPUs {})",
            self.client.0, self.client.1
        )
    }
}

impl Outcome {
    /// An outcome with no operations yet.
    pub(crate) fn new(name: &'static str, errors: u64, seconds: f64) -> Self {
        Self {
            name,
            ops: 0,
            errors,
            seconds,
            latency: histogram(),
            cpu: None,
        }
    }

    pub(crate) fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    pub(crate) fn p50_ms(&self) -> f64 {
        millis(self.latency.value_at_quantile(0.5))
    }

    pub(crate) fn p99_ms(&self) -> f64 {
        millis(self.latency.value_at_quantile(0.99))
    }

    /// One line: ops/s, p50, p99, p99.9 and errors.
    pub(crate) fn line(&self) -> String {
        format!(
            "{:<9} ops/s: {:>10.0}  p50: {:>7.3} ms  p99: {:>7.3} ms  p99.9: {:>7.3} ms  errors: {}",
            self.name,
            self.ops_per_second(),
            self.p50_ms(),
            millis(self.latency.value_at_quantile(0.99)),
            millis(self.latency.value_at_quantile(0.999)),
            self.errors
        )
    }
}

pub(crate) fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// A latency histogram from 1 µs to 60 s at 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
