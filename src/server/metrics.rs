//! Prometheus text exposition, hand-rolled: a handful of counters and histograms behind one
//! mutex is all the server needs, and it keeps the dependency list short.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Batch size buckets, requests per model call.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.len() != bounds.len() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.total += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in bounds.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.total
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.total);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batches: BTreeMap<String, Histogram>,
    sequences: BTreeMap<String, u64>,
    tokens: BTreeMap<String, u64>,
}

/// The server's counters; `/metrics` renders them.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain counters: still usable.
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// One answered HTTP request.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        self.with(|m| {
            *m.requests.entry((route.to_string(), status)).or_default() += 1;
            m.latency
                .entry(route.to_string())
                .or_default()
                .observe(&LATENCY_BUCKETS, seconds);
        });
    }

    /// One model call of `requests` requests, `sequences` texts and `tokens` tokens.
    pub fn observe_batch(&self, model: &str, requests: usize, sequences: usize, tokens: usize) {
        self.with(|m| {
            m.batches
                .entry(model.to_string())
                .or_default()
                .observe(&BATCH_BUCKETS, requests as f64);
            *m.sequences.entry(model.to_string()).or_default() += sequences as u64;
            *m.tokens.entry(model.to_string()).or_default() += tokens as u64;
        });
    }

    /// The exposition text; `queues` gives each model's current queue depth.
    pub fn render(&self, queues: &[(String, usize)]) -> String {
        let mut out = String::new();
        self.with(|m| {
            out.push_str("# HELP medkern_requests_total HTTP requests answered, by route and status.\n# TYPE medkern_requests_total counter\n");
            for ((route, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "medkern_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
            out.push_str("# HELP medkern_request_duration_seconds Time from request to response, by route.\n# TYPE medkern_request_duration_seconds histogram\n");
            for (route, h) in &m.latency {
                h.write(
                    &mut out,
                    "medkern_request_duration_seconds",
                    &format!("route=\"{route}\""),
                    &LATENCY_BUCKETS,
                );
            }
            out.push_str("# HELP medkern_batch_size_requests Requests per model call, by model.\n# TYPE medkern_batch_size_requests histogram\n");
            for (model, h) in &m.batches {
                h.write(
                    &mut out,
                    "medkern_batch_size_requests",
                    &format!("model=\"{model}\""),
                    &BATCH_BUCKETS,
                );
            }
            out.push_str("# HELP medkern_sequences_total Texts run through the model.\n# TYPE medkern_sequences_total counter\n");
            for (model, n) in &m.sequences {
                let _ = writeln!(out, "medkern_sequences_total{{model=\"{model}\"}} {n}");
            }
            out.push_str("# HELP medkern_tokens_total Tokens run through the model.\n# TYPE medkern_tokens_total counter\n");
            for (model, n) in &m.tokens {
                let _ = writeln!(out, "medkern_tokens_total{{model=\"{model}\"}} {n}");
            }
        });
        out.push_str("# HELP medkern_queue_depth Requests waiting for the model.\n# TYPE medkern_queue_depth gauge\n");
        for (model, d) in queues {
            let _ = writeln!(out, "medkern_queue_depth{{model=\"{model}\"}} {d}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn render_counts_requests_buckets_and_queues() {
        let m = Metrics::default();
        m.observe_request("/embed", 200, 0.003);
        m.observe_request("/embed", 200, 0.2);
        m.observe_request("/embed", 422, 0.0001);
        m.observe_batch("mini", 3, 4, 40);
        let text = m.render(&[("mini".into(), 2)]);
        for want in [
            "medkern_requests_total{route=\"/embed\",status=\"200\"} 2",
            "medkern_requests_total{route=\"/embed\",status=\"422\"} 1",
            "medkern_request_duration_seconds_bucket{route=\"/embed\",le=\"0.001\"} 1",
            "medkern_request_duration_seconds_bucket{route=\"/embed\",le=\"0.005\"} 2",
            "medkern_request_duration_seconds_bucket{route=\"/embed\",le=\"+Inf\"} 3",
            "medkern_request_duration_seconds_count{route=\"/embed\"} 3",
            "medkern_batch_size_requests_bucket{model=\"mini\",le=\"2\"} 0",
            "medkern_batch_size_requests_bucket{model=\"mini\",le=\"4\"} 1",
            "medkern_sequences_total{model=\"mini\"} 4",
            "medkern_tokens_total{model=\"mini\"} 40",
            "medkern_queue_depth{model=\"mini\"} 2",
        ] {
            assert!(text.contains(want), "missing {want}:\n{text}");
        }
    }
}
