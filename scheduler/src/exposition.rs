//! Prometheus's text exposition format 0.0.4, the one Triton serves. Written here rather
//! than through `prometheus-client`, whose OpenMetrics encoder appends `_total` to every
//! counter: Triton's counters (`nv_inference_request_success`, …) have no suffix, and
//! Triton's dashboards and alert rules match those names exactly.

use std::fmt::Write;

/// What a metric family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One sample: its label pairs, in order, and its value.
pub type Sample = (Vec<(&'static str, String)>, f64);

/// A metric family: name, help text, kind and samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds `value` to the sample with these labels (a new one if none has them yet):
    /// counters summed over nodes.
    pub fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        match self.samples.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, v)) => *v += value,
            None => self.samples.push((labels, value)),
        }
    }
}

/// The text of `families`, in order; a family without samples is left out, as
/// Triton leaves out what it has not measured.
pub fn encode(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
        for (labels, value) in &family.samples {
            out.push_str(family.name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(out, " {}", number(*value));
        }
    }
    out
}

/// Integers without a fraction (counters of requests, bytes), others as Rust prints them.
fn number(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e15 {
        format!("{}", value as i64)
    } else if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_with_help_type_and_escaped_labels() {
        let mut success = Family::new("nv_inference_request_success", "Successes", Kind::Counter);
        success.add(vec![("model", "m".into()), ("version", "1".into())], 2.0);
        success.add(vec![("model", "m".into()), ("version", "1".into())], 3.0);
        success.add(
            vec![("model", "a\"b\\c\nd".into()), ("version", "2".into())],
            1.0,
        );
        let mut load = Family::new("nv_cpu_utilization", "Busy\nshare", Kind::Gauge);
        load.add(vec![], 0.25);
        let empty = Family::new("nv_gpu_utilization", "Not measured", Kind::Gauge);
        assert_eq!(
            encode(&[success, empty, load]),
            "# HELP nv_inference_request_success Successes\n\
             # TYPE nv_inference_request_success counter\n\
             nv_inference_request_success{model=\"m\",version=\"1\"} 5\n\
             nv_inference_request_success{model=\"a\\\"b\\\\c\\nd\",version=\"2\"} 1\n\
             # HELP nv_cpu_utilization Busy\\nshare\n\
             # TYPE nv_cpu_utilization gauge\n\
             nv_cpu_utilization 0.25\n"
        );
    }

    #[test]
    fn numbers_are_integers_when_whole() {
        assert_eq!(number(1073741824.0), "1073741824");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
