//! A histogram of integer observations in plain atomics: an observation is a bucket
//! search and two additions, with no lock (prometheus-client's `Histogram` takes a
//! lock per observation, which showed as a sixth of the instructions per delivery
//! of a broadcast to small rooms).

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

/// Observations in integer units (bytes, recipients, microseconds), encoded in the
/// metric's base unit: each value times `scale`. Cheap to clone: clones share counts.
#[derive(Debug, Clone)]
pub(crate) struct Histogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending, in integer units.
    bounds: &'static [u64],
    /// One count per bound, then the count over the last bound (`+Inf`).
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    /// Buckets up to each of `bounds` (ascending) and `+Inf`; values encoded times
    /// `scale`.
    pub(crate) fn new(bounds: &'static [u64], scale: f64) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Inner {
            bounds,
            counts,
            sum: AtomicU64::new(0),
            scale,
        }))
    }

    pub(crate) fn observe(&self, value: u64) {
        let inner = &*self.0;
        let bucket = inner.bounds.partition_point(|&bound| bound < value);
        if let Some(count) = inner.counts.get(bucket) {
            count.fetch_add(1, Relaxed);
        }
        inner.sum.fetch_add(value, Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &*self.0;
        // prometheus-client writes `f64::MAX` as `+Inf`.
        let bounds = inner.bounds.iter().map(|&bound| bound as f64 * inner.scale);
        let buckets: Vec<(f64, u64)> = bounds
            .chain([f64::MAX])
            .zip(inner.counts.iter().map(|count| count.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum.load(Relaxed) as f64 * inner.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;
    use prometheus_client::{encoding::text::encode, registry::Registry};

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::new(&[10, 100], 0.5);
        for value in [10, 11, 100, 1000] {
            histogram.observe(value);
        }
        let mut registry = Registry::default();
        registry.register("h", "help", histogram);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "h_sum 560.5\n",
            "h_count 4\n",
            "h_bucket{le=\"5.0\"} 1\n",
            "h_bucket{le=\"50.0\"} 3\n",
            "h_bucket{le=\"+Inf\"} 4\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
