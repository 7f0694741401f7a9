//! Byte budgets: how many bytes of request inputs the agent may hold at once, all
//! models together and each model's queue, and how many run in one batch. Counted on
//! the inputs' raw contents, from admission until the answer; past a budget a request
//! is refused at once (RESOURCE_EXHAUSTED), never queued to wait for room. A request
//! larger than a whole budget is refused too: no amount of waiting would let it in.
//!
//! The defaults come from the memory the node offers (--memory-limit, else the host's):
//! a quarter of it in flight, half of that per model queue; a batch holds at most 8 MiB
//! of input (less on a node that offers under 256 MiB). On a CPU, a model of large
//! inputs (images) gains nothing from running many at once: measured on PP-OCR's text
//! detector at 640×640, one image a run took 100 ms per image, three 131 ms, nine
//! 192 ms, while its worker's memory grew about 14 bytes per byte of input. Small
//! inputs still batch up to the model's max_batch_size.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits count KiB: a semaphore takes at most u32::MAX permits at once.
const UNIT: u64 = 1024;

/// The agent's in-flight budget: this share of the memory the node offers.
pub const IN_FLIGHT_SHARE: u64 = 4;
/// A model queue's budget: this share of the agent's in-flight budget.
pub const QUEUE_SHARE: u64 = 2;
/// A batch's budget: at most this many bytes of input...
pub const BATCH_BYTES: u64 = 8 << 20;
/// ...and at most this share of the memory the node offers.
pub const BATCH_SHARE: u64 = 32;

/// The agent's in-flight budget by default: a share of the memory the node offers, or
/// none when the node's memory is unknown (0).
pub fn default_in_flight(offered: u64) -> u64 {
    if offered == 0 {
        u64::MAX
    } else {
        offered / IN_FLIGHT_SHARE
    }
}

/// A model queue's budget: its setting, else a share of the agent's.
pub fn queue_bytes(setting: Option<u64>, in_flight: u64) -> u64 {
    setting.unwrap_or(in_flight / QUEUE_SHARE)
}

/// A batch's budget: its setting, else [`BATCH_BYTES`], less on a node with little
/// memory. A request over it still runs, alone (batcher.rs).
pub fn batch_bytes(setting: Option<u64>, offered: u64) -> u64 {
    setting.unwrap_or_else(|| {
        if offered == 0 {
            BATCH_BYTES
        } else {
            BATCH_BYTES.min(offered / BATCH_SHARE)
        }
    })
}

/// Whose budget it is: the words of a refusal, and how to raise the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// All models of the agent together.
    Agent,
    /// One model's requests, queued or running.
    Queue,
}

/// Bytes of request inputs held against a limit. Every holder keeps its bytes until it
/// drops them. A semaphore of KiB decides; the exact bytes held are counted beside it.
#[derive(Debug)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    held: Arc<AtomicU64>,
    limit: AtomicU64,
    scope: Scope,
}

/// Bytes taken from a budget; given back on drop.
#[derive(Debug)]
pub struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    held: Arc<AtomicU64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl ByteBudget {
    pub fn new(limit: u64, scope: Scope) -> ByteBudget {
        let units = limit.div_ceil(UNIT).min(Semaphore::MAX_PERMITS as u64);
        ByteBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            held: Arc::default(),
            limit: AtomicU64::new(limit),
            scope,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new limit, applied while bytes are held (see [`super::resize::resize`]).
    pub fn resize(&self, limit: u64) {
        let units = |l: u64| l.div_ceil(UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        let old = self.limit.swap(limit, Ordering::Relaxed);
        super::resize::resize(&self.permits, units(old), units(limit));
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Takes `bytes` for `model`'s request, or says why not.
    pub fn try_take(&self, model: &str, bytes: u64) -> Result<Held, OverBudget> {
        let refusal = |held| OverBudget {
            model: model.to_string(),
            scope: self.scope,
            held,
            limit: self.limit(),
            request: bytes,
        };
        if bytes > self.limit() {
            return Err(refusal(None));
        }
        let units = u32::try_from(bytes.div_ceil(UNIT)).map_err(|_| refusal(None))?;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| refusal(Some(self.held())))?;
        self.held.fetch_add(bytes, Ordering::AcqRel);
        Ok(Held {
            _permit: permit,
            bytes,
            held: self.held.clone(),
        })
    }
}

/// A request refused by a byte budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    pub model: String,
    pub scope: Scope,
    /// Bytes held when it came; `None` when the request alone is over the limit.
    pub held: Option<u64>,
    pub limit: u64,
    /// The request's own bytes.
    pub request: u64,
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (model, request, limit) = (&self.model, size(self.request), size(self.limit));
        let raise = match self.scope {
            Scope::Agent => "--max-in-flight-bytes of the agent",
            Scope::Queue => "max_queue_bytes in the model's herd.toml",
        };
        match (self.held, self.scope) {
            (None, Scope::Agent) => write!(
                f,
                "model '{model}': the request's {request} of inputs is more than the agent's \
                 whole limit of {limit} in flight; send fewer items per request, or raise {raise}"
            ),
            (None, Scope::Queue) => write!(
                f,
                "model '{model}': the request's {request} of inputs is more than the model's \
                 whole queue limit of {limit}; send fewer items per request, or raise {raise}"
            ),
            (Some(held), Scope::Agent) => write!(
                f,
                "model '{model}': the agent holds {} of requests in flight; this one's {request} \
                 would pass its limit of {limit} ({raise}); try again later",
                size(held)
            ),
            (Some(held), Scope::Queue) => write!(
                f,
                "model '{model}' holds {} of requests queued or running; this one's {request} \
                 would pass its limit of {limit} ({raise}); try again later",
                size(held)
            ),
        }
    }
}

impl std::error::Error for OverBudget {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn defaults_are_shares_of_the_memory_offered() {
        let offered = 2048 * MIB;
        let in_flight = default_in_flight(offered);
        assert_eq!(in_flight, 512 * MIB);
        assert_eq!(queue_bytes(None, in_flight), 256 * MIB);
        assert_eq!(queue_bytes(Some(MIB), in_flight), MIB, "a setting wins");
        assert_eq!(batch_bytes(None, offered), 8 * MIB);
        assert_eq!(batch_bytes(None, 128 * MIB), 4 * MIB, "a small node");
        assert_eq!(
            batch_bytes(Some(64 * MIB), offered),
            64 * MIB,
            "a setting wins"
        );
        assert_eq!(default_in_flight(0), u64::MAX, "unknown memory: no limit");
        assert_eq!(batch_bytes(None, 0), 8 * MIB);
    }

    #[test]
    fn a_budget_refuses_past_its_limit_and_frees_on_drop() {
        let budget = ByteBudget::new(10 * MIB, Scope::Queue);
        let a = budget.try_take("m", 6 * MIB).expect("fits");
        assert_eq!(budget.held(), 6 * MIB);
        let refused = budget.try_take("m", 5 * MIB).expect_err("6 + 5 > 10");
        assert_eq!(refused.held, Some(6 * MIB));
        assert_eq!(
            refused.to_string(),
            "model 'm' holds 6.0 MiB of requests queued or running; this one's 5.0 MiB would \
             pass its limit of 10.0 MiB (max_queue_bytes in the model's herd.toml); try again later"
        );
        let b = budget.try_take("m", 4 * MIB).expect("6 + 4 fits");
        drop(a);
        assert_eq!(budget.held(), 4 * MIB);
        drop(b);
        assert_eq!(budget.held(), 0);
        budget.try_take("m", 10 * MIB).expect("the whole budget");
    }

    #[test]
    fn a_request_over_the_whole_budget_is_refused_as_such() {
        let budget = ByteBudget::new(512 * MIB, Scope::Agent);
        let refused = budget.try_take("det", 600 * MIB).expect_err("too large");
        assert_eq!(refused.held, None);
        assert_eq!(
            refused.to_string(),
            "model 'det': the request's 600.0 MiB of inputs is more than the agent's whole \
             limit of 512.0 MiB in flight; send fewer items per request, or raise \
             --max-in-flight-bytes of the agent"
        );
        let held = budget.try_take("det", 500 * MIB).expect("fits");
        let refused = budget.try_take("det", 20 * MIB).expect_err("full");
        assert!(
            refused
                .to_string()
                .starts_with("model 'det': the agent holds 500.0 MiB of requests in flight"),
            "{refused}"
        );
        drop(held);
        let unlimited = ByteBudget::new(u64::MAX, Scope::Agent);
        unlimited.try_take("m", 1 << 40).expect("no limit");
        let odd = ByteBudget::new(1000, Scope::Queue);
        odd.try_take("m", 1000)
            .expect("a budget under one KiB takes its limit");
    }
}
