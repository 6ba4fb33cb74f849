//! Prometheus `/metrics`: per endpoint and per plugin, read at scrape time from the same atomic
//! counters the admin API shows.
//!
//! The request path only bumps relaxed atomics ([`EndpointStats`] here, `PluginStats` in each
//! plugin's call guard); this collector walks them when Prometheus scrapes and writes the text
//! format with `prometheus-client`'s encoder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backworks_plugin_host::{CallClock, PluginHost};
use backworks_plugin_host::{HistogramSnapshot, LatencyHistogram, StatsSnapshot, error_kinds};
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// One endpoint's counters.
#[derive(Debug)]
pub struct EndpointStats {
    /// The endpoint's name in `backworks.yaml`.
    pub endpoint: String,
    /// The plugin serving it.
    pub plugin: String,
    requests: AtomicU64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    by_class: [AtomicU64; 5],
    latency: LatencyHistogram,
    /// Requests are timed from [`EndpointStats::started`] to [`EndpointStats::record`].
    clock: CallClock,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl EndpointStats {
    /// Zeroed counters for `endpoint`, served by `plugin`.
    pub fn new(endpoint: &str, plugin: &str) -> EndpointStats {
        EndpointStats {
            endpoint: endpoint.to_owned(),
            plugin: plugin.to_owned(),
            requests: AtomicU64::new(0),
            by_class: Default::default(),
            latency: LatencyHistogram::new(),
            clock: CallClock::new(),
        }
    }

    /// The time a request starts, to hand to [`EndpointStats::record`] once it is answered.
    pub fn started(&self) -> Duration {
        self.clock.now()
    }

    /// Counts one answered request, which [`EndpointStats::started`] at `started`.
    pub fn record(&self, status: u16, started: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency
            .observe(self.clock.now().saturating_sub(started));
    }
}

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    host: Arc<PluginHost>,
    endpoints: Vec<Arc<EndpointStats>>,
    hooks: Vec<super::HookShare>,
}

impl Metrics {
    /// Metrics of `host`'s plugins, of `endpoints`, and of the plugins' `hooks`.
    pub fn new(
        host: Arc<PluginHost>,
        endpoints: Vec<Arc<EndpointStats>>,
        hooks: Vec<super::HookShare>,
    ) -> Metrics {
        Metrics {
            host,
            endpoints,
            hooks,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Reads one counter out of a plugin's stats.
type CounterOf = fn(&StatsSnapshot) -> u64;

fn counter(encoder: &mut MetricEncoder<'_>, labels: &Labels<'_>, value: u64) -> std::fmt::Result {
    encoder
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(encoder: &mut MetricEncoder<'_>, labels: &Labels<'_>, value: i64) -> std::fmt::Result {
    encoder.encode_family(labels)?.encode_gauge(&value)
}

fn histogram(
    encoder: &mut MetricEncoder<'_>,
    labels: &Labels<'_>,
    snapshot: &HistogramSnapshot,
) -> std::fmt::Result {
    let buckets: Vec<(f64, u64)> = snapshot.buckets().collect();
    encoder
        .encode_family(labels)?
        .encode_histogram::<NoLabelSet>(snapshot.sum_seconds(), snapshot.count(), &buckets, None)
}

/// Writes one metric family: its descriptor, then one sample per item.
fn family<T>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    items: &[T],
    mut sample: impl FnMut(&mut MetricEncoder<'_>, &T) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for item in items {
        sample(&mut metric, item)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        let endpoints = &self.endpoints;
        family(
            e,
            "backworks_requests",
            "Requests answered, per endpoint.",
            MetricType::Counter,
            endpoints,
            |m, s| {
                let labels = vec![("endpoint", s.endpoint.as_str()), ("plugin", &s.plugin)];
                counter(m, &labels, s.requests.load(Ordering::Relaxed))
            },
        )?;
        family(
            e,
            "backworks_responses",
            "Responses per endpoint, by status class.",
            MetricType::Counter,
            endpoints,
            |m, s| {
                for (class, count) in CLASSES.iter().zip(&s.by_class) {
                    let labels = vec![
                        ("endpoint", s.endpoint.as_str()),
                        ("plugin", &s.plugin),
                        ("status", class),
                    ];
                    counter(m, &labels, count.load(Ordering::Relaxed))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "backworks_request_duration_seconds",
            "Time from routing to response, per endpoint (hooks included).",
            MetricType::Histogram,
            endpoints,
            |m, s| {
                let labels = vec![("endpoint", s.endpoint.as_str()), ("plugin", &s.plugin)];
                histogram(m, &labels, &s.latency.snapshot())
            },
        )?;

        let plugins: Vec<_> = self
            .host
            .statuses()
            .into_iter()
            .map(|status| {
                let guard = self.host.guarded(&status.name);
                let stats = guard.as_ref().map(|g| g.stats().snapshot());
                let breaker = guard.as_ref().map(|g| g.breaker_state());
                (status, stats, breaker)
            })
            .collect();
        family(
            e,
            "backworks_plugin_state",
            "Lifecycle state of each plugin (1 for the current state).",
            MetricType::Gauge,
            &plugins,
            |m, (status, _, _)| {
                for state in [
                    "loading", "loaded", "active", "error", "disabled", "stopped",
                ] {
                    let labels = vec![("plugin", status.name.as_str()), ("state", state)];
                    gauge(m, &labels, i64::from(status.state.as_str() == state))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "backworks_plugin_health",
            "Last health report of each plugin (1 for the current status).",
            MetricType::Gauge,
            &plugins,
            |m, (status, _, _)| {
                let current = status.health.as_ref().map_or("unknown", |h| h.as_str());
                for health in ["healthy", "degraded", "unhealthy", "unknown"] {
                    let labels = vec![("plugin", status.name.as_str()), ("status", health)];
                    gauge(m, &labels, i64::from(current == health))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "backworks_plugin_breaker_state",
            "Circuit breaker state of each loaded plugin (1 for the current state).",
            MetricType::Gauge,
            &plugins,
            |m, (status, _, breaker)| {
                let Some(breaker) = breaker else {
                    return Ok(());
                };
                for state in ["closed", "open", "half_open"] {
                    let labels = vec![("plugin", status.name.as_str()), ("state", state)];
                    gauge(m, &labels, i64::from(breaker.as_str() == state))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "backworks_plugin_generation",
            "The serving generation of each plugin (1 at start, one more per reload that changed it).",
            MetricType::Gauge,
            &plugins,
            |m, (status, _, _)| {
                let labels = vec![("plugin", status.name.as_str())];
                gauge(
                    m,
                    &labels,
                    i64::try_from(status.generation).unwrap_or(i64::MAX),
                )
            },
        )?;
        family(
            e,
            "backworks_plugin_retired_generations",
            "Generations of each plugin retired by reloads (their libraries stay mapped; bounded \
             by reload.max_generations).",
            MetricType::Gauge,
            &plugins,
            |m, (status, _, _)| {
                let retired = self.host.retired_generations(&status.name);
                let labels = vec![("plugin", status.name.as_str())];
                gauge(m, &labels, i64::try_from(retired).unwrap_or(i64::MAX))
            },
        )?;
        let supervised: Vec<_> = plugins
            .iter()
            .filter_map(|(status, _, _)| {
                status
                    .supervision
                    .as_ref()
                    .map(|s| (status.name.as_str(), s))
            })
            .collect();
        family(
            e,
            "backworks_plugin_restarts",
            "Restarts of each process-isolated plugin's child after a crash.",
            MetricType::Counter,
            &supervised,
            |m, (plugin, s)| counter(m, &vec![("plugin", *plugin)], s.restarts),
        )?;
        family(
            e,
            "backworks_plugin_crashes",
            "Crashes of each process-isolated plugin's child (killed as unresponsive or unhealthy \
             included).",
            MetricType::Counter,
            &supervised,
            |m, (plugin, s)| counter(m, &vec![("plugin", *plugin)], s.crashes),
        )?;
        let loaded: Vec<_> = plugins
            .iter()
            .filter_map(|(status, stats, _)| stats.as_ref().map(|s| (status.name.as_str(), s)))
            .collect();
        let plugin_counters: [(&str, &str, CounterOf); 5] = [
            (
                "backworks_plugin_calls",
                "Calls of each plugin that ended (endpoint calls and hooks).",
                |s| s.calls,
            ),
            (
                "backworks_plugin_timeouts",
                "Calls answered 504 because they passed the plugin's timeout.",
                |s| s.timeouts,
            ),
            (
                "backworks_plugin_overruns",
                "Calls that blocked their thread past the timeout (in-process code cannot be \
                 pre-empted).",
                |s| s.overruns,
            ),
            (
                "backworks_plugin_shed",
                "Calls shed with 503 at the plugin's concurrency limit.",
                |s| s.shed,
            ),
            (
                "backworks_plugin_breaker_rejected",
                "Calls refused with 503 by the plugin's open circuit breaker.",
                |s| s.breaker_rejected,
            ),
        ];
        for (name, help, value) in plugin_counters {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                &loaded,
                |m, (plugin, s)| counter(m, &vec![("plugin", *plugin)], value(s)),
            )?;
        }
        family(
            e,
            "backworks_plugin_errors",
            "Failed calls of each plugin, by error kind.",
            MetricType::Counter,
            &loaded,
            |m, (plugin, s)| {
                for kind in error_kinds() {
                    let labels = vec![("plugin", *plugin), ("kind", kind)];
                    counter(m, &labels, s.errors.get(kind))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "backworks_plugin_in_flight",
            "Calls of each plugin running now.",
            MetricType::Gauge,
            &loaded,
            |m, (plugin, s)| {
                gauge(
                    m,
                    &vec![("plugin", *plugin)],
                    i64::try_from(s.in_flight).unwrap_or(i64::MAX),
                )
            },
        )?;
        family(
            e,
            "backworks_plugin_call_duration_seconds",
            "Time each plugin took per call (calls that reached it).",
            MetricType::Histogram,
            &loaded,
            |m, (plugin, s)| histogram(m, &vec![("plugin", *plugin)], &s.latency),
        )?;
        family(
            e,
            "backworks_hook_failures",
            "Failed hook calls of each plugin, by what followed: `rejected` (the client got the \
             error) or `skipped` (on_failure: skip passed the hook over).",
            MetricType::Counter,
            &self.hooks,
            |m, share| {
                let rejected = share.counts.rejected.load(Ordering::Relaxed);
                let skipped = share.counts.skipped.load(Ordering::Relaxed);
                counter(
                    m,
                    &vec![("plugin", &share.name), ("outcome", "rejected")],
                    rejected,
                )?;
                counter(
                    m,
                    &vec![("plugin", &share.name), ("outcome", "skipped")],
                    skipped,
                )
            },
        )?;
        let observers: Vec<_> = self
            .hooks
            .iter()
            .filter_map(|share| share.observer.as_ref())
            .collect();
        family(
            e,
            "backworks_observer_exchanges",
            "Request/response pairs offered to each observing plugin, by outcome: `delivered`, \
             `failed` (its call failed), `dropped` (its queue was full).",
            MetricType::Counter,
            &observers,
            |m, observer| {
                let counts = observer.counts();
                for (outcome, value) in [
                    ("delivered", &counts.delivered),
                    ("failed", &counts.failed),
                    ("dropped", &counts.dropped),
                ] {
                    let labels = vec![("plugin", observer.name()), ("outcome", outcome)];
                    counter(m, &labels, value.load(Ordering::Relaxed))?;
                }
                Ok(())
            },
        )?;
        Ok(())
    }
}
