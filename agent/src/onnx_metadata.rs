//! A value of an ONNX file's metadata (`metadata_props`), read without ONNX Runtime:
//! PP-OCR recognition models keep their charset under `character`.

use std::path::Path;

/// The parts of onnx.proto's ModelProto read here; prost skips the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StringStringEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// The metadata value under `key`, if the model has one.
pub fn value(model: &Path, key: &str) -> Result<Option<String>, String> {
    let bytes = std::fs::read(model).map_err(|e| e.to_string())?;
    let proto: ModelProto =
        prost::Message::decode(bytes.as_slice()).map_err(|e| format!("not an ONNX model: {e}"))?;
    Ok(proto
        .metadata_props
        .into_iter()
        .find(|e| e.key == key)
        .map(|e| e.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_metadata_value() {
        let proto = ModelProto {
            metadata_props: vec![StringStringEntry {
                key: "character".into(),
                value: "a\nb".into(),
            }],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, prost::Message::encode_to_vec(&proto)).expect("write");
        assert_eq!(value(&path, "character"), Ok(Some("a\nb".into())));
        assert_eq!(value(&path, "other"), Ok(None));
        std::fs::write(&path, b"\xff\xff\xff").expect("write");
        assert!(value(&path, "character").is_err());
    }
}
