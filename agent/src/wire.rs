//! The agent ↔ worker pipe: length-prefixed protobuf frames (herd.v1 worker.proto) and
//! the conversions between herd's tensors and their wire form.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use herd_proto::datatype::UnknownDataType;
use herd_proto::herd::{WorkerTensor, WorkerTensorSpec};
use prost::Message;

use herd_core::tensor::{Tensor, TensorSpec};

/// Writes one frame: a 4-byte little-endian length, then the message.
pub fn write_frame(out: &mut impl Write, message: &impl Message) -> io::Result<()> {
    let len = u32::try_from(message.encoded_len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + len as usize);
    buf.extend_from_slice(&len.to_le_bytes());
    message
        .encode(&mut buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    out.write_all(&buf)?;
    out.flush()
}

/// Reads one frame; `None` when the other side closed the pipe between frames.
pub fn read_frame<M: Message + Default>(input: &mut impl Read) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = BytesMut::zeroed(u32::from_le_bytes(len) as usize);
    input.read_exact(&mut buf)?;
    M::decode(buf.freeze())
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn tensor_to_wire(t: Tensor) -> WorkerTensor {
    WorkerTensor {
        datatype: t.dtype.as_str().to_string(),
        shape: t.shape,
        data: t.data,
    }
}

pub fn tensor_from_wire(t: WorkerTensor) -> Result<Tensor, UnknownDataType> {
    Ok(Tensor {
        dtype: t.datatype.parse()?,
        shape: t.shape,
        data: t.data,
    })
}

pub fn spec_to_wire(s: &TensorSpec) -> WorkerTensorSpec {
    WorkerTensorSpec {
        name: s.name.clone(),
        datatype: s.dtype.as_str().to_string(),
        shape: s.shape.clone(),
    }
}

pub fn spec_from_wire(s: WorkerTensorSpec) -> Result<TensorSpec, UnknownDataType> {
    Ok(TensorSpec {
        dtype: s.datatype.parse()?,
        name: s.name,
        shape: s.shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use herd_proto::herd::{worker_reply, WorkerOutputs, WorkerReply};
    use herd_proto::DataType;

    #[test]
    fn frames_round_trip_and_a_closed_pipe_reads_as_none() {
        let reply = WorkerReply {
            reply: Some(worker_reply::Reply::Outputs(WorkerOutputs {
                outputs: vec![tensor_to_wire(Tensor {
                    dtype: DataType::Fp32,
                    shape: vec![1, 2],
                    data: Bytes::from_static(&[0, 0, 128, 63, 0, 0, 0, 64]),
                })],
            })),
        };
        let mut pipe = Vec::new();
        write_frame(&mut pipe, &reply).expect("write");
        write_frame(&mut pipe, &reply).expect("write");
        let mut input = &pipe[..];
        for _ in 0..2 {
            let got: WorkerReply = read_frame(&mut input).expect("read").expect("a frame");
            assert_eq!(got, reply);
        }
        assert_eq!(read_frame::<WorkerReply>(&mut input).expect("eof"), None);
        let mut cut = &pipe[..pipe.len() - 1];
        read_frame::<WorkerReply>(&mut cut).expect("first frame whole");
        assert!(
            read_frame::<WorkerReply>(&mut cut).is_err(),
            "a frame cut short is an error"
        );
    }
}
