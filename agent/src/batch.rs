//! Stacking requests into one model run and splitting the outputs back. Pure.

use bytes::{Bytes, BytesMut};

use herd_core::tensor::Tensor;

/// Concatenates each input of several requests along the first dimension. All
/// requests share a batch key, so their non-batch dimensions and dtypes agree.
pub fn concat(requests: &[&[Tensor]]) -> Vec<Tensor> {
    let Some(first) = requests.first() else {
        return Vec::new();
    };
    if requests.len() == 1 {
        return first.to_vec();
    }
    (0..first.len())
        .map(|i| {
            let rows: i64 = requests.iter().map(|r| r[i].shape[0]).sum();
            let len = requests.iter().map(|r| r[i].data.len()).sum();
            let mut data = BytesMut::with_capacity(len);
            for r in requests {
                data.extend_from_slice(&r[i].data);
            }
            let mut shape = first[i].shape.clone();
            shape[0] = rows;
            Tensor {
                dtype: first[i].dtype,
                shape,
                data: data.freeze(),
            }
        })
        .collect()
}

/// A batched run whose outputs cannot be split back into its requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an output has {rows} rows for a batch of {total}; the model does not batch along its first dimension")]
pub struct NotBatched {
    pub rows: i64,
    pub total: usize,
}

/// Splits each output of a batched run into one slice per request, by the rows each
/// request contributed. The slices share the run's buffer; nothing is copied.
pub fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>, NotBatched> {
    // A lone request takes the outputs as they are; this is also how a model
    // without a batch dimension is served.
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let total: usize = rows.iter().sum();
    let mut per_request: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::new()).collect();
    for out in outputs {
        let batch = out.shape.first().copied().unwrap_or(-1);
        if batch != total as i64 {
            return Err(NotBatched { rows: batch, total });
        }
        let row_bytes = out.data.len().checked_div(total).unwrap_or(0);
        let data: Bytes = out.data;
        let mut offset = 0;
        for (slot, &r) in per_request.iter_mut().zip(rows) {
            let mut shape = out.shape.clone();
            shape[0] = r as i64;
            slot.push(Tensor {
                dtype: out.dtype,
                shape,
                data: data.slice(offset..offset + r * row_bytes),
            });
            offset += r * row_bytes;
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_proto::DataType;

    fn t(rows: i64, fill: u8) -> Tensor {
        Tensor {
            dtype: DataType::Uint8,
            shape: vec![rows, 2],
            data: Bytes::from(vec![fill; rows as usize * 2]),
        }
    }

    #[test]
    fn concat_then_split_gives_each_request_its_own_rows() {
        let a = [t(1, 1)];
        let b = [t(2, 2)];
        let joined = concat(&[&a, &b]);
        assert_eq!(joined[0].shape, vec![3, 2]);
        assert_eq!(&joined[0].data[..], &[1, 1, 2, 2, 2, 2]);
        let back = split(joined, &[1, 2]).expect("rows add up");
        assert_eq!(back[0][0], a[0]);
        assert_eq!(back[1][0], b[0]);
    }

    #[test]
    fn split_refuses_outputs_that_are_not_batched() {
        let err = split(vec![t(1, 0)], &[1, 1])
            .expect_err("1 row for 2 requests")
            .to_string();
        assert!(err.contains("1 rows for a batch of 2"), "{err}");
    }
}
