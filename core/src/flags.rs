//! The per-model default flags, shared by `herd agent`, `herd scheduler` and `herd up`:
//! what a model without a setting of its own in herd.toml gets.

use std::time::Duration;

use crate::settings::{ModelSettings, Ttl};

#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ModelDefaultFlags {
    /// Idle time after which a model is unloaded: a duration ("300s", "5m"),
    /// 0 to unload right after use, or -1 / "never". Default 300s. A model's herd.toml
    /// `ttl` overrides it.
    #[arg(long, env = "HERD_TTL", value_parser = Ttl::parse, allow_hyphen_values = true)]
    pub ttl: Option<Ttl>,

    /// Most items in one model run. Default 32. herd.toml `max_batch_size` overrides it.
    #[arg(long, env = "HERD_MAX_BATCH_SIZE", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: Option<u32>,

    /// How long a partial batch may wait for more requests ("2ms"); 0 (the default)
    /// runs at once. herd.toml `max_batch_delay` overrides it.
    #[arg(long, env = "HERD_MAX_BATCH_DELAY", value_parser = humantime::parse_duration)]
    pub max_batch_delay: Option<Duration>,

    /// Requests a model may have queued or running; beyond it, RESOURCE_EXHAUSTED.
    /// Default 1024. herd.toml `queue_capacity` overrides it.
    #[arg(long, env = "HERD_QUEUE_CAPACITY", value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: Option<u32>,

    /// ONNX Runtime intra-op threads per model; 0 (the default) lets ONNX Runtime
    /// choose. herd.toml `intra_op_threads` overrides it.
    #[arg(long, env = "HERD_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,

    /// Most elements one item of an input may have along the model's dynamic
    /// dimensions (their product, the batch dimension aside); a larger item is
    /// INVALID_ARGUMENT. Default 4194304 (a 2048×2048 image). herd.toml
    /// `max_item_elements` overrides it.
    #[arg(long, env = "HERD_MAX_ITEM_ELEMENTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_item_elements: Option<u64>,

    /// Bytes of request inputs a model may hold queued or running (e.g. 256MiB); beyond
    /// it, RESOURCE_EXHAUSTED. Default: half the agent's --max-in-flight-bytes.
    /// herd.toml `max_queue_bytes` overrides it.
    #[arg(long, env = "HERD_MAX_QUEUE_BYTES")]
    pub max_queue_bytes: Option<bytesize::ByteSize>,

    /// Bytes of request inputs in one model run (e.g. 64MiB); a larger request runs
    /// alone. Default 8MiB (on a CPU, large inputs gain nothing from large batches),
    /// less on a node that offers under 256 MiB. herd.toml `max_batch_bytes` overrides it.
    #[arg(long, env = "HERD_MAX_BATCH_BYTES")]
    pub max_batch_bytes: Option<bytesize::ByteSize>,

    /// ONNX Runtime's CPU memory arena (true or false): on (the default) runs faster
    /// and keeps the peak of a run's buffers while the model is loaded; off gives
    /// them back after each run. herd.toml `memory_arena` overrides it.
    #[arg(long, env = "HERD_MEMORY_ARENA")]
    pub memory_arena: Option<bool>,
}

impl ModelDefaultFlags {
    /// The settings of a model without a herd.toml of its own: the flags given, else
    /// herd's defaults.
    pub fn settings(&self) -> ModelSettings {
        let d = ModelSettings::default();
        ModelSettings {
            max_batch_size: self.max_batch_size.map_or(d.max_batch_size, |n| n as usize),
            max_batch_delay: self.max_batch_delay.unwrap_or(d.max_batch_delay),
            ttl: self.ttl.unwrap_or(d.ttl),
            intra_op_threads: self.intra_op_threads.unwrap_or(d.intra_op_threads),
            queue_capacity: self.queue_capacity.map_or(d.queue_capacity, |n| n as usize),
            max_item_elements: self.max_item_elements.unwrap_or(d.max_item_elements),
            // Zero bytes would refuse everything: read as "the default".
            max_queue_bytes: self
                .max_queue_bytes
                .map(|b| b.as_u64())
                .filter(|&b| b > 0)
                .or(d.max_queue_bytes),
            max_batch_bytes: self
                .max_batch_bytes
                .map(|b| b.as_u64())
                .filter(|&b| b > 0)
                .or(d.max_batch_bytes),
            memory_arena: self.memory_arena.unwrap_or(d.memory_arena),
            // herd.toml only: no flag.
            intra_op_spinning: d.intra_op_spinning,
        }
    }

    /// The flags given (on the command line or by environment), each with its
    /// environment variable: "--ttl (HERD_TTL)".
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.ttl.is_some(), "--ttl (HERD_TTL)"),
            (
                self.max_batch_size.is_some(),
                "--max-batch-size (HERD_MAX_BATCH_SIZE)",
            ),
            (
                self.max_batch_delay.is_some(),
                "--max-batch-delay (HERD_MAX_BATCH_DELAY)",
            ),
            (
                self.queue_capacity.is_some(),
                "--queue-capacity (HERD_QUEUE_CAPACITY)",
            ),
            (
                self.intra_op_threads.is_some(),
                "--intra-op-threads (HERD_INTRA_OP_THREADS)",
            ),
            (
                self.max_item_elements.is_some(),
                "--max-item-elements (HERD_MAX_ITEM_ELEMENTS)",
            ),
            (
                self.max_queue_bytes.is_some(),
                "--max-queue-bytes (HERD_MAX_QUEUE_BYTES)",
            ),
            (
                self.max_batch_bytes.is_some(),
                "--max-batch-bytes (HERD_MAX_BATCH_BYTES)",
            ),
            (
                self.memory_arena.is_some(),
                "--memory-arena (HERD_MEMORY_ARENA)",
            ),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        defaults: ModelDefaultFlags,
    }

    fn parse(args: &[&str]) -> ModelDefaultFlags {
        let args = std::iter::once("herd").chain(args.iter().copied());
        Cli::try_parse_from(args).expect("valid flags").defaults
    }

    #[test]
    fn flags_given_override_herds_defaults_and_are_named() {
        let flags = parse(&["--ttl", "never", "--max-batch-size", "4"]);
        let s = flags.settings();
        assert_eq!(s.ttl, Ttl::Never);
        assert_eq!(s.max_batch_size, 4);
        assert_eq!(s.queue_capacity, ModelSettings::default().queue_capacity);
        assert_eq!(
            flags.given(),
            ["--ttl (HERD_TTL)", "--max-batch-size (HERD_MAX_BATCH_SIZE)"]
        );
    }

    #[test]
    fn no_flags_give_herds_defaults() {
        let flags = parse(&[]);
        assert_eq!(flags.settings(), ModelSettings::default());
        assert!(flags.given().is_empty());
    }

    #[test]
    fn byte_limits_and_item_elements_are_flags_too() {
        let flags = parse(&[
            "--max-item-elements",
            "100",
            "--max-queue-bytes",
            "8MiB",
            "--max-batch-bytes",
            "1MiB",
        ]);
        let s = flags.settings();
        assert_eq!(s.max_item_elements, 100);
        assert_eq!(s.max_queue_bytes, Some(8 << 20));
        assert_eq!(s.max_batch_bytes, Some(1 << 20));
        assert_eq!(flags.given().len(), 3);
    }

    #[test]
    fn a_zero_batch_size_is_refused() {
        let args = ["herd", "--max-batch-size", "0"];
        assert!(Cli::try_parse_from(args).is_err());
    }
}
