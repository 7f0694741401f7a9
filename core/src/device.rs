//! Where a model's replicas may run.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    Gpu,
    /// A GPU when one can take it, else the CPU.
    Any,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Any => "any",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("device {0:?}: use \"cpu\", \"gpu\" or \"any\"")]
pub struct UnknownDevice(pub String);

impl FromStr for Device {
    type Err = UnknownDevice;
    fn from_str(s: &str) -> Result<Device, UnknownDevice> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            "any" => Ok(Device::Any),
            other => Err(UnknownDevice(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_mistakes_are_named() {
        for d in [Device::Cpu, Device::Gpu, Device::Any] {
            assert_eq!(d.as_str().parse::<Device>(), Ok(d));
        }
        let err = "tpu".parse::<Device>().expect_err("unknown");
        assert!(err.to_string().contains("\"tpu\""), "{err}");
    }
}
