//! The scheduler arrives with its own issue; this crate holds its place in the workspace.
