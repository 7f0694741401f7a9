//! Immich's machine-learning tasks, as herd serves them: the `/predict` request's
//! `entries` ([`entries`]), image decoding with a pixel limit ([`decode`]) and the
//! processing Immich's ML server does around each ONNX model ([`clip`], [`faces`],
//! [`ocr`]), so that herd's answers match Immich's number by number.
//!
//! Everything here is pure: bytes and arrays in, arrays and values out. No ONNX Runtime,
//! no network; the agent runs the models between these steps, and batches them.

pub mod clip;
pub mod decode;
pub mod entries;
pub mod faces;
pub mod ocr;
pub mod stage;

pub use image::RgbImage;
