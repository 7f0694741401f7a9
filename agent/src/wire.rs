//! The agent ↔ worker pipe: length-prefixed protobuf frames (herd.v1 worker.proto) and
//! the conversions between herd's tensors and their wire form.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use herd_proto::datatype::UnknownDataType;
use herd_proto::herd::{
    worker_command, worker_reply, WorkerCommand, WorkerReply, WorkerTensor, WorkerTensorSpec,
};
use prost::Message;

use herd_core::tensor::{Tensor, TensorSpec};

/// A message that may carry tensors: a run's inputs or its outputs.
pub trait Frame: Message {
    /// Its tensors and the tag of the field that holds them, when it carries some.
    /// Both `WorkerCommand.run` (2) and `WorkerReply.outputs` (3) hold a message whose
    /// field 1 repeats the tensors.
    fn tensors(&self) -> Option<(u32, &[WorkerTensor])>;
}

impl Frame for WorkerCommand {
    fn tensors(&self) -> Option<(u32, &[WorkerTensor])> {
        match &self.command {
            Some(worker_command::Command::Run(run)) => Some((2, &run.inputs)),
            _ => None,
        }
    }
}

impl Frame for WorkerReply {
    fn tensors(&self) -> Option<(u32, &[WorkerTensor])> {
        match &self.reply {
            Some(worker_reply::Reply::Outputs(o)) => Some((3, &o.outputs)),
            _ => None,
        }
    }
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB")
}

/// Writes one frame: a 4-byte little-endian length, then the message. Tensors are
/// written from where their bytes are (one vectored write), not copied into the frame.
pub fn write_frame(out: &mut impl Write, message: &impl Frame) -> io::Result<()> {
    if let Some((tag, tensors)) = message.tensors() {
        return write_tensor_frame(out, tag, tensors);
    }
    let len = u32::try_from(message.encoded_len()).map_err(|_| too_large())?;
    let mut buf = Vec::with_capacity(4 + len as usize);
    buf.extend_from_slice(&len.to_le_bytes());
    message
        .encode(&mut buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    out.write_all(&buf)?;
    out.flush()
}

/// The frame of a message whose field `tag` holds a message repeating `tensors` in its
/// field 1, encoded by hand around the tensors' bytes: each tensor's small fields and
/// its data field's key and length go in a head, its bytes follow as they are.
fn write_tensor_frame(out: &mut impl Write, tag: u32, tensors: &[WorkerTensor]) -> io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    let heads: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| {
            let fields = WorkerTensor {
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
                data: bytes::Bytes::new(),
            };
            let mut head = fields.encode_to_vec();
            encode_key(3, WireType::LengthDelimited, &mut head);
            encode_varint(t.data.len() as u64, &mut head);
            head
        })
        .collect();
    let inner: Vec<u64> = heads
        .iter()
        .zip(tensors)
        .map(|(h, t)| (h.len() + t.data.len()) as u64)
        .collect();
    let body: u64 = inner
        .iter()
        .map(|&n| key_len(1) as u64 + encoded_len_varint(n) as u64 + n)
        .sum();
    let total = key_len(tag) as u64 + encoded_len_varint(body) as u64 + body;
    let total = u32::try_from(total).map_err(|_| too_large())?;

    // The parts in order: [length, outer key and length, first entry's key, length and
    // head], data, [next entry's key, length and head], data, ...
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(tensors.len() + 1);
    let mut part = total.to_le_bytes().to_vec();
    encode_key(tag, WireType::LengthDelimited, &mut part);
    encode_varint(body, &mut part);
    for (head, &n) in heads.iter().zip(&inner) {
        encode_key(1, WireType::LengthDelimited, &mut part);
        encode_varint(n, &mut part);
        part.extend_from_slice(head);
        parts.push(std::mem::take(&mut part));
    }
    if parts.is_empty() {
        parts.push(part);
    }
    let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(2 * parts.len());
    for (i, p) in parts.iter().enumerate() {
        slices.push(io::IoSlice::new(p));
        if let Some(t) = tensors.get(i) {
            if !t.data.is_empty() {
                slices.push(io::IoSlice::new(&t.data));
            }
        }
    }
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = out.write_vectored(slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut slices, n);
    }
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
    use herd_proto::herd::WorkerOutputs;
    use herd_proto::DataType;

    /// Tensors: none, an empty one, and several of various sizes.
    fn tensor_sets() -> Vec<Vec<WorkerTensor>> {
        let t = |n: usize, shape: Vec<i64>| WorkerTensor {
            datatype: "FP32".into(),
            shape,
            data: Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>()),
        };
        vec![
            vec![],
            vec![t(0, vec![0, 4])],
            vec![t(8, vec![1, 2])],
            vec![t(4 << 20, vec![1 << 20]), t(300, vec![75]), t(0, vec![])],
        ]
    }

    #[test]
    fn frames_with_tensors_decode_as_prost_encodes_them() {
        use herd_proto::herd::{WorkerOutputs, WorkerRun};
        for tensors in tensor_sets() {
            let command = WorkerCommand {
                command: Some(worker_command::Command::Run(WorkerRun {
                    inputs: tensors.clone(),
                })),
            };
            let reply = WorkerReply {
                reply: Some(worker_reply::Reply::Outputs(WorkerOutputs {
                    outputs: tensors.clone(),
                })),
            };
            let mut pipe = Vec::new();
            write_frame(&mut pipe, &command).expect("write");
            write_frame(&mut pipe, &reply).expect("write");
            let mut input = &pipe[..];
            let got: WorkerCommand = read_frame(&mut input).expect("read").expect("a frame");
            assert_eq!(got, command);
            let got: WorkerReply = read_frame(&mut input).expect("read").expect("a frame");
            assert_eq!(got, reply);
            assert!(input.is_empty(), "each frame is as long as it says");
        }
    }

    /// A writer that takes at most 7 bytes a call, so that slices end mid-write.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_frame_written_in_pieces_is_whole() {
        use herd_proto::herd::WorkerOutputs;
        let reply = WorkerReply {
            reply: Some(worker_reply::Reply::Outputs(WorkerOutputs {
                outputs: tensor_sets().pop().expect("a set"),
            })),
        };
        let mut pipe = Trickle(Vec::new());
        write_frame(&mut pipe, &reply).expect("write");
        let got: WorkerReply = read_frame(&mut &pipe.0[..])
            .expect("read")
            .expect("a frame");
        assert_eq!(got, reply);
    }

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
