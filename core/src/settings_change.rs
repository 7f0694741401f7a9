//! What changed between two settings of a model, in words, and whether a running
//! model can take the change live: the scheduler's event and the agent's reconfigure
//! both read it here, so they agree.

use crate::settings::{ModelSettings, Ttl};

fn ttl(t: Ttl) -> String {
    match t {
        Ttl::Never => "never".to_string(),
        Ttl::After(d) => humantime::format_duration(d).to_string(),
    }
}

fn bytes(b: Option<u64>) -> String {
    b.map_or("default".to_string(), |b| {
        bytesize::ByteSize(b).display().iec().to_string()
    })
}

/// Each setting that differs, as "name old -> new", in herd.toml's names.
pub fn differences(old: &ModelSettings, new: &ModelSettings) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} -> {b}"));
        }
    };
    note(
        "max_batch_size",
        old.max_batch_size.to_string(),
        new.max_batch_size.to_string(),
    );
    note(
        "max_batch_delay",
        humantime::format_duration(old.max_batch_delay).to_string(),
        humantime::format_duration(new.max_batch_delay).to_string(),
    );
    note("ttl", ttl(old.ttl), ttl(new.ttl));
    note(
        "intra_op_threads",
        old.intra_op_threads.to_string(),
        new.intra_op_threads.to_string(),
    );
    note(
        "queue_capacity",
        old.queue_capacity.to_string(),
        new.queue_capacity.to_string(),
    );
    note(
        "max_item_elements",
        old.max_item_elements.to_string(),
        new.max_item_elements.to_string(),
    );
    note(
        "max_queue_bytes",
        bytes(old.max_queue_bytes),
        bytes(new.max_queue_bytes),
    );
    note(
        "max_batch_bytes",
        bytes(old.max_batch_bytes),
        bytes(new.max_batch_bytes),
    );
    note(
        "memory_arena",
        old.memory_arena.to_string(),
        new.memory_arena.to_string(),
    );
    note(
        "intra_op_spinning",
        old.intra_op_spinning.to_string(),
        new.intra_op_spinning.to_string(),
    );
    out
}

/// The settings a running model cannot change without a new ONNX Runtime session (a
/// new worker): its threads, their spinning and its memory arena. Everything else
/// applies live.
pub fn needs_new_session(old: &ModelSettings, new: &ModelSettings) -> bool {
    old.intra_op_threads != new.intra_op_threads
        || old.memory_arena != new.memory_arena
        || old.intra_op_spinning != new.intra_op_spinning
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn differences_name_each_changed_setting_and_only_threads_and_arena_need_a_session() {
        let old = ModelSettings::default();
        assert!(differences(&old, &old).is_empty());
        let live = ModelSettings {
            max_batch_size: 8,
            ttl: Ttl::Never,
            max_queue_bytes: Some(1 << 20),
            ..old.clone()
        };
        assert_eq!(
            differences(&old, &live),
            [
                "max_batch_size 32 -> 8",
                "ttl 5m -> never",
                "max_queue_bytes default -> 1.0 MiB"
            ]
        );
        assert!(!needs_new_session(&old, &live));
        let threads = ModelSettings {
            intra_op_threads: 2,
            max_batch_delay: Duration::from_millis(5),
            ..old.clone()
        };
        assert_eq!(
            differences(&old, &threads),
            ["max_batch_delay 0s -> 5ms", "intra_op_threads 0 -> 2"]
        );
        assert!(needs_new_session(&old, &threads));
    }
}
