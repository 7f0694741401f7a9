//! The commands of the `herd` binary that are not a server: `infer`, `models`,
//! `nodes` and `bench` (the project's load generator, with `--local` for ONNX Runtime
//! in-process), and `herd up`, which composes a scheduler and an agent in one process.
//! Presentation (tables, progress bars) lives here, not in the client library.

pub mod bench;
pub mod cluster_commands;
pub mod connect;
pub mod infer;
pub mod inputs;
pub mod up;
