//! Triton's binary tensor data extension, the framing only: a body is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the tensors' raw bytes, one after
//! another in the order of the JSON's tensors that carry `binary_data_size`.

use bytes::Bytes;

use super::errors::HttpError;

/// The header that gives the length of the JSON part, on requests and responses.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A body split into its JSON header and what follows it.
#[derive(Debug)]
pub struct Split {
    pub json: Bytes,
    pub binary: Binary,
}

/// Splits `body` by the `Inference-Header-Content-Length` value, if the request gave
/// one; without it the whole body is JSON.
pub fn split(body: Bytes, header_length: Option<&[u8]>) -> Result<Split, HttpError> {
    let Some(value) = header_length else {
        return Ok(Split {
            json: body,
            binary: Binary::new(Bytes::new()),
        });
    };
    let length = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "Inference-Header-Content-Length must be a number of bytes, got {:?}",
                String::from_utf8_lossy(value)
            ))
        })?;
    if length > body.len() {
        return Err(HttpError::bad_request(format!(
            "Inference-Header-Content-Length is {length} but the body has only {} bytes",
            body.len()
        )));
    }
    let mut json = body;
    let rest = json.split_off(length);
    Ok(Split {
        json,
        binary: Binary::new(rest),
    })
}

/// The binary part of a request, taken tensor by tensor.
#[derive(Debug)]
pub struct Binary {
    rest: Bytes,
}

impl Binary {
    pub fn new(rest: Bytes) -> Binary {
        Binary { rest }
    }

    /// The next `size` bytes, for the tensor `what` names ("input 'x'").
    pub fn take(&mut self, size: usize, what: &str) -> Result<Bytes, HttpError> {
        if size > self.rest.len() {
            return Err(HttpError::bad_request(format!(
                "{what} has binary_data_size {size} but only {} bytes of binary data are left",
                self.rest.len()
            )));
        }
        Ok(self.rest.split_to(size))
    }

    /// Fails when bytes are left that no tensor claimed: the sizes and the body
    /// disagree, and guessing which tensor is wrong would hide the mistake.
    pub fn finish(self) -> Result<(), HttpError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(HttpError::bad_request(format!(
                "{} bytes of binary data follow the JSON header beyond the inputs' binary_data_size",
                self.rest.len()
            )))
        }
    }
}

/// A response body of `json` followed by `chunks`, and the header length to send
/// (`None` when there are no binary tensors: the body is then plain JSON).
pub fn frame(json: Vec<u8>, chunks: Vec<Bytes>) -> (Bytes, Option<usize>) {
    if chunks.is_empty() {
        return (Bytes::from(json), None);
    }
    let length = json.len();
    let total = length + chunks.iter().map(Bytes::len).sum::<usize>();
    let mut body = Vec::with_capacity(total);
    body.extend_from_slice(&json);
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    (Bytes::from(body), Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_splits_at_the_header_length_and_tensors_follow_in_order() {
        let body = Bytes::from_static(b"{\"a\":1}ABCDEFG");
        let Split { json, mut binary } = split(body, Some(b"7")).expect("valid framing");
        assert_eq!(&json[..], b"{\"a\":1}");
        assert_eq!(&binary.take(3, "input 'x'").expect("3 bytes")[..], b"ABC");
        assert_eq!(&binary.take(4, "input 'y'").expect("4 bytes")[..], b"DEFG");
        binary.finish().expect("nothing left");
    }

    #[test]
    fn without_the_header_the_body_is_json() {
        let Split { json, binary } = split(Bytes::from_static(b"{}"), None).expect("json");
        assert_eq!(&json[..], b"{}");
        binary.finish().expect("no binary part");
    }

    #[test]
    fn bad_lengths_are_refused_with_what_is_wrong() {
        let err = split(Bytes::from_static(b"{}"), Some(b"9")).expect_err("too long");
        assert!(
            err.message.contains("is 9 but the body has only 2 bytes"),
            "{err:?}"
        );
        let err = split(Bytes::from_static(b"{}"), Some(b"-1")).expect_err("not a number");
        assert!(err.message.contains("must be a number of bytes"), "{err:?}");
        let Split { mut binary, .. } = split(Bytes::from_static(b"{}AB"), Some(b"2")).expect("ok");
        let err = binary.take(3, "input 'x'").expect_err("short");
        assert_eq!(
            err.message,
            "input 'x' has binary_data_size 3 but only 2 bytes of binary data are left"
        );
        let Split { binary, .. } = split(Bytes::from_static(b"{}AB"), Some(b"2")).expect("ok");
        let err = binary.finish().expect_err("unclaimed bytes");
        assert!(err.message.starts_with("2 bytes of binary data"), "{err:?}");
    }

    #[test]
    fn a_response_frames_json_then_chunks() {
        let (body, length) = frame(b"{}".to_vec(), vec![Bytes::from_static(b"xy")]);
        assert_eq!((&body[..], length), (&b"{}xy"[..], Some(2)));
        let (body, length) = frame(b"{}".to_vec(), Vec::new());
        assert_eq!((&body[..], length), (&b"{}"[..], None));
    }
}
