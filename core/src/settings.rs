//! Per-model settings: the agent's defaults, overridden by `<model>/herd.toml`.

use std::time::Duration;

use serde::Deserialize;

use crate::device::Device;

/// A herd.toml (or a setting's text) that cannot be used, and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl From<String> for SettingsError {
    fn from(s: String) -> SettingsError {
        SettingsError(s)
    }
}

impl From<&str> for SettingsError {
    fn from(s: &str) -> SettingsError {
        SettingsError(s.to_string())
    }
}

/// How long an idle model stays loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    Never,
    After(Duration),
}

impl Ttl {
    /// Seconds as in herd.toml and on the command line: negative means never.
    pub fn from_seconds(s: i64) -> Ttl {
        if s < 0 {
            Ttl::Never
        } else {
            Ttl::After(Duration::from_secs(s as u64))
        }
    }

    /// "never", a whole number of seconds (negative = never), or a duration like "5m".
    pub fn parse(text: &str) -> Result<Ttl, SettingsError> {
        let text = text.trim();
        if text == "never" {
            return Ok(Ttl::Never);
        }
        if let Ok(s) = text.parse::<i64>() {
            return Ok(Ttl::from_seconds(s));
        }
        humantime::parse_duration(text)
            .map(Ttl::After)
            .map_err(|e| {
                SettingsError(format!(
                    "ttl {text:?}: {e} (use e.g. \"300s\", \"5m\", 0, or -1 for never)"
                ))
            })
    }

    pub fn as_millis(self) -> i64 {
        match self {
            Ttl::Never => -1,
            Ttl::After(d) => d.as_millis().min(i64::MAX as u128) as i64,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSettings {
    /// Most items one model run takes. 1 turns batching off.
    pub max_batch_size: usize,
    /// How long a partial batch may wait to fill; zero runs at once.
    pub max_batch_delay: Duration,
    pub ttl: Ttl,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose.
    pub intra_op_threads: usize,
    /// Most requests waiting or running; past it, RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Most elements one item of an input may have along the dimensions the model
    /// leaves dynamic (the batch dimension aside): the product of their sizes. A
    /// 2048×2048 image passes the default; a larger one is INVALID_ARGUMENT.
    pub max_item_elements: u64,
    /// Most bytes of request inputs the model holds queued or running; past it,
    /// RESOURCE_EXHAUSTED. `None`: half the agent's in-flight budget.
    pub max_queue_bytes: Option<u64>,
    /// Most bytes of request inputs in one model run (a request larger than that runs
    /// alone). `None`: 8 MiB, less on a node that offers under 256 MiB.
    pub max_batch_bytes: Option<u64>,
    /// ONNX Runtime's CPU memory arena: faster runs (measured +10-30% on the
    /// models in BENCHMARKS.md), at the price of keeping the peak of a run's
    /// buffers while the model stays loaded. Its memory comes back when the model
    /// unloads, as its worker process ends.
    pub memory_arena: bool,
    /// ONNX Runtime's intra-op threads spin between runs, waiting for work: faster for a
    /// model that has the cores to itself, CPU taken from the others where several
    /// models share a node (an Immich cache's pipelines turn it off by default).
    pub intra_op_spinning: bool,
}

/// The default `max_item_elements`: a 2048×2048 image.
pub const MAX_ITEM_ELEMENTS: u64 = 2048 * 2048;

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            max_batch_size: 32,
            max_batch_delay: Duration::ZERO,
            ttl: Ttl::After(Duration::from_secs(300)),
            intra_op_threads: 0,
            queue_capacity: 1024,
            max_item_elements: MAX_ITEM_ELEMENTS,
            max_queue_bytes: None,
            max_batch_bytes: None,
            memory_arena: true,
            intra_op_spinning: true,
        }
    }
}

/// herd.toml's cluster part, read by the scheduler (an agent alone ignores it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub min_replicas: u32,
    /// 0 = no limit.
    pub max_replicas: u32,
    pub device: Device,
    pub memory_hint: Option<u64>,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        ClusterPolicy {
            min_replicas: 0,
            max_replicas: 0,
            device: Device::Cpu,
            memory_hint: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    max_batch_size: Option<usize>,
    max_batch_delay: Option<String>,
    ttl: Option<TtlValue>,
    intra_op_threads: Option<usize>,
    queue_capacity: Option<usize>,
    max_item_elements: Option<u64>,
    max_queue_bytes: Option<ByteCount>,
    max_batch_bytes: Option<ByteCount>,
    memory_arena: Option<bool>,
    intra_op_spinning: Option<bool>,
    min_replicas: Option<u32>,
    max_replicas: Option<u32>,
    device: Option<String>,
    memory_hint: Option<String>,
}

impl ClusterPolicy {
    /// Reads the cluster settings of a herd.toml.
    pub fn from_file(text: &str) -> Result<ClusterPolicy, SettingsError> {
        let file = SettingsFile::parse(text)?;
        let mut p = ClusterPolicy::default();
        if let Some(n) = file.min_replicas {
            p.min_replicas = n;
        }
        if let Some(n) = file.max_replicas {
            p.max_replicas = n;
        }
        if p.max_replicas > 0 && p.min_replicas > p.max_replicas {
            return Err(SettingsError(format!(
                "min_replicas ({}) is above max_replicas ({})",
                p.min_replicas, p.max_replicas
            )));
        }
        if let Some(d) = file.device {
            p.device = d
                .parse()
                .map_err(|e: crate::device::UnknownDevice| e.to_string())?;
        }
        if let Some(h) = file.memory_hint {
            let bytes: bytesize::ByteSize = h.parse().map_err(|e| {
                SettingsError(format!("memory_hint {h:?}: {e} (use e.g. \"512MiB\")"))
            })?;
            p.memory_hint = Some(bytes.as_u64());
        }
        Ok(p)
    }
}

impl SettingsFile {
    fn parse(text: &str) -> Result<SettingsFile, SettingsError> {
        toml::from_str(text).map_err(|e: toml::de::Error| SettingsError(e.message().to_string()))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TtlValue {
    Seconds(i64),
    Text(String),
}

/// A size in herd.toml: a number of bytes, or text like "256MiB".
#[derive(Deserialize)]
#[serde(untagged)]
enum ByteCount {
    Bytes(u64),
    Text(String),
}

impl ByteCount {
    /// The size in bytes; `key` names the setting in the error.
    fn bytes(self, key: &str) -> Result<u64, SettingsError> {
        let bytes = match self {
            ByteCount::Bytes(n) => n,
            ByteCount::Text(t) => t
                .parse::<bytesize::ByteSize>()
                .map_err(|e| SettingsError(format!("{key} {t:?}: {e} (use e.g. \"256MiB\")")))?
                .as_u64(),
        };
        if bytes == 0 {
            return Err(SettingsError(format!("{key} must be at least 1 byte")));
        }
        Ok(bytes)
    }
}

impl ModelSettings {
    /// Applies a herd.toml over these settings.
    pub fn with_file(&self, text: &str) -> Result<ModelSettings, SettingsError> {
        let file = SettingsFile::parse(text)?;
        let mut s = self.clone();
        if let Some(n) = file.max_batch_size {
            if n == 0 {
                return Err("max_batch_size must be at least 1".into());
            }
            s.max_batch_size = n;
        }
        if let Some(d) = file.max_batch_delay {
            s.max_batch_delay = humantime::parse_duration(&d).map_err(|e| {
                SettingsError(format!("max_batch_delay {d:?}: {e} (use e.g. \"2ms\")"))
            })?;
        }
        match file.ttl {
            Some(TtlValue::Seconds(n)) => s.ttl = Ttl::from_seconds(n),
            Some(TtlValue::Text(t)) => s.ttl = Ttl::parse(&t)?,
            None => {}
        }
        if let Some(n) = file.intra_op_threads {
            s.intra_op_threads = n;
        }
        if let Some(n) = file.queue_capacity {
            if n == 0 {
                return Err("queue_capacity must be at least 1".into());
            }
            s.queue_capacity = n;
        }
        if let Some(n) = file.max_item_elements {
            if n == 0 {
                return Err("max_item_elements must be at least 1".into());
            }
            s.max_item_elements = n;
        }
        if let Some(b) = file.max_queue_bytes {
            s.max_queue_bytes = Some(b.bytes("max_queue_bytes")?);
        }
        if let Some(b) = file.max_batch_bytes {
            s.max_batch_bytes = Some(b.bytes("max_batch_bytes")?);
        }
        if let Some(on) = file.memory_arena {
            s.memory_arena = on;
        }
        if let Some(on) = file.intra_op_spinning {
            s.intra_op_spinning = on;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults() {
        let s = ModelSettings::default()
            .with_file("max_batch_size = 8\nmax_batch_delay = \"2ms\"\nttl = -1\n")
            .expect("valid");
        assert_eq!(s.max_batch_size, 8);
        assert_eq!(s.max_batch_delay, Duration::from_millis(2));
        assert_eq!(s.ttl, Ttl::Never);
        assert_eq!(s.queue_capacity, 1024);
        let s = ModelSettings::default()
            .with_file("ttl = \"5m\"")
            .expect("valid");
        assert_eq!(s.ttl, Ttl::After(Duration::from_secs(300)));
        assert_eq!(
            ModelSettings::default()
                .with_file("ttl = 0")
                .expect("valid")
                .ttl,
            Ttl::After(Duration::ZERO)
        );
    }

    #[test]
    fn mistakes_are_reported() {
        let d = ModelSettings::default();
        assert!(d
            .with_file("max_bach_size = 8")
            .expect_err("typo")
            .to_string()
            .contains("unknown field"));
        assert!(d
            .with_file("max_batch_size = 0")
            .expect_err("zero")
            .to_string()
            .contains("at least 1"));
        assert!(d
            .with_file("ttl = \"soon\"")
            .expect_err("bad ttl")
            .to_string()
            .contains("ttl \"soon\""));
        assert!(d
            .with_file("max_queue_bytes = \"lots\"")
            .expect_err("bad size")
            .to_string()
            .contains("max_queue_bytes \"lots\""));
        assert!(d
            .with_file("max_item_elements = 0")
            .expect_err("zero")
            .to_string()
            .contains("at least 1"));
    }

    #[test]
    fn byte_limits_and_item_elements_come_from_the_file() {
        let d = ModelSettings::default();
        assert_eq!(d.max_item_elements, 2048 * 2048);
        assert_eq!((d.max_queue_bytes, d.max_batch_bytes), (None, None));
        let s = d
            .with_file(
                "max_item_elements = 9000000\nmax_queue_bytes = \"256MiB\"\nmax_batch_bytes = 1048576\n",
            )
            .expect("valid");
        assert_eq!(s.max_item_elements, 9_000_000);
        assert_eq!(s.max_queue_bytes, Some(256 << 20));
        assert_eq!(s.max_batch_bytes, Some(1 << 20));
    }

    #[test]
    fn the_memory_arena_is_on_unless_the_file_turns_it_off() {
        let d = ModelSettings::default();
        assert!(d.memory_arena);
        assert!(
            !d.with_file("memory_arena = false\n")
                .expect("valid")
                .memory_arena
        );
        assert!(d.with_file("memory_arena = \"no\"\n").is_err());
        assert!(d.intra_op_spinning);
        assert!(
            !d.with_file("intra_op_spinning = false\n")
                .expect("valid")
                .intra_op_spinning
        );
    }
}
