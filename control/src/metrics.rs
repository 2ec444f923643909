//! What an operator graphs and alerts on, in the Prometheus text format (`GET /metrics`):
//! requests by endpoint, action and status; latency histograms; gateways known and seen;
//! express sync groups; provisioning failures.
//!
//! Labels come from fixed lists (an unknown action is counted as `other`), so a client cannot
//! grow the series without bound. Counters live in memory and restart at zero with the
//! process, as Prometheus counters may; the gauges are read from the store at each scrape.
//! `/metrics` carries no secrets and no names, only counts, so it needs no signature: expose it
//! to the monitoring network only, like the rest of the API.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::provision::{GroupHandles, GroupSpec, ProvisionError, Provisioner, QueueHandles};

/// Upper bounds (seconds) of the latency buckets.
const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(BOUNDS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// Which handler answered: `endpoint` is `api`, `agent` or `other`; `action` is the API
/// action, the agent call, or the path's kind.
pub type Route = (&'static str, &'static str);

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(Route, u16), u64>,
    latency: BTreeMap<Route, Histogram>,
    provision_failures: BTreeMap<&'static str, u64>,
}

pub struct Metrics {
    inner: Mutex<Inner>,
    started: Instant,
}

/// Store-derived gauges, read at scrape time.
pub struct Gauges {
    pub gateways: i64,
    pub gateways_seen: i64,
    pub express_syncs: i64,
}

/// A gateway counts as seen when it polled within this window.
pub const SEEN_WINDOW: Duration = Duration::from_secs(600);

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            inner: Mutex::default(),
            started: Instant::now(),
        }
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn observe(&self, route: Route, status: u16, elapsed: Duration) {
        let mut inner = self.lock();
        *inner.requests.entry((route, status)).or_default() += 1;
        inner
            .latency
            .entry(route)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn provision_failed(&self, operation: &'static str) {
        *self.lock().provision_failures.entry(operation).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, gauges: Option<&Gauges>) -> String {
        let inner = self.lock();
        let mut out = String::new();
        out.push_str("# HELP sgw_control_requests_total Requests answered, by endpoint, action and HTTP status.\n# TYPE sgw_control_requests_total counter\n");
        for (((endpoint, action), code), n) in &inner.requests {
            let _ = writeln!(
                out,
                "sgw_control_requests_total{{endpoint=\"{endpoint}\",action=\"{action}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP sgw_control_request_duration_seconds Time from request to answer, by endpoint and action.\n# TYPE sgw_control_request_duration_seconds histogram\n");
        for ((endpoint, action), h) in &inner.latency {
            let labels = format!("endpoint=\"{endpoint}\",action=\"{action}\"");
            for (bound, n) in BOUNDS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "sgw_control_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "sgw_control_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "sgw_control_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "sgw_control_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out.push_str("# HELP sgw_control_provision_failures_total Failed provisioning calls (topics, queues, notification rules), by operation.\n# TYPE sgw_control_provision_failures_total counter\n");
        for operation in [
            "create_group",
            "delete_group",
            "create_queue",
            "delete_queue",
        ] {
            let n = inner
                .provision_failures
                .get(operation)
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "sgw_control_provision_failures_total{{operation=\"{operation}\"}} {n}"
            );
        }
        if let Some(g) = gauges {
            let _ = write!(
                out,
                "# HELP sgw_control_gateways Gateways known.\n# TYPE sgw_control_gateways gauge\nsgw_control_gateways {}\n\
                 # HELP sgw_control_gateways_seen Gateways that polled in the last {} seconds.\n# TYPE sgw_control_gateways_seen gauge\nsgw_control_gateways_seen {}\n\
                 # HELP sgw_control_express_syncs Express sync groups.\n# TYPE sgw_control_express_syncs gauge\nsgw_control_express_syncs {}\n",
                g.gateways,
                SEEN_WINDOW.as_secs(),
                g.gateways_seen,
                g.express_syncs
            );
        }
        let _ = write!(
            out,
            "# HELP sgw_control_uptime_seconds Seconds since this process started.\n# TYPE sgw_control_uptime_seconds gauge\nsgw_control_uptime_seconds {}\n",
            self.started.elapsed().as_secs()
        );
        out
    }
}

/// Counts the failures of the provisioner it wraps.
pub struct CountingProvisioner {
    pub inner: Arc<dyn Provisioner>,
    pub metrics: Arc<Metrics>,
}

impl CountingProvisioner {
    fn count<T>(
        &self,
        operation: &'static str,
        result: Result<T, ProvisionError>,
    ) -> Result<T, ProvisionError> {
        if result.is_err() {
            self.metrics.provision_failed(operation);
        }
        result
    }
}

impl Provisioner for CountingProvisioner {
    fn create_group(&self, spec: &GroupSpec) -> Result<GroupHandles, ProvisionError> {
        self.count("create_group", self.inner.create_group(spec))
    }
    fn delete_group(&self, spec: &GroupSpec, handles: &GroupHandles) -> Result<(), ProvisionError> {
        self.count("delete_group", self.inner.delete_group(spec, handles))
    }
    fn create_queue(
        &self,
        queue_name: &str,
        topic_ref: &str,
    ) -> Result<QueueHandles, ProvisionError> {
        self.count(
            "create_queue",
            self.inner.create_queue(queue_name, topic_ref),
        )
    }
    fn delete_queue(&self, handles: &QueueHandles) -> Result<(), ProvisionError> {
        self.count("delete_queue", self.inner.delete_queue(handles))
    }
    fn agent_endpoint(&self) -> (String, String) {
        self.inner.agent_endpoint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe(("api", "CreateExpressSync"), 200, Duration::from_millis(3));
        m.observe(("api", "CreateExpressSync"), 200, Duration::from_millis(30));
        m.observe(("agent", "assignments"), 304, Duration::from_micros(200));
        m.provision_failed("create_queue");
        let text = m.render(Some(&Gauges {
            gateways: 3,
            gateways_seen: 2,
            express_syncs: 1,
        }));
        assert!(text.contains(
            "sgw_control_requests_total{endpoint=\"api\",action=\"CreateExpressSync\",code=\"200\"} 2"
        ));
        assert!(text.contains(
            "sgw_control_requests_total{endpoint=\"agent\",action=\"assignments\",code=\"304\"} 1"
        ));
        assert!(text.contains("action=\"CreateExpressSync\",le=\"0.005\"} 1"));
        assert!(text.contains("action=\"CreateExpressSync\",le=\"0.05\"} 2"));
        assert!(text.contains("action=\"CreateExpressSync\",le=\"+Inf\"} 2"));
        assert!(
            text.contains("sgw_control_provision_failures_total{operation=\"create_queue\"} 1")
        );
        assert!(
            text.contains("sgw_control_provision_failures_total{operation=\"create_group\"} 0")
        );
        assert!(text.contains("sgw_control_gateways_seen 2"));
        // Every sample line is `name{labels} value` or `name value`: parseable exposition.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
