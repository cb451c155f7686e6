//! Where tensors live: `cpu`, `cuda`, `cuda:N`, as written in configs (`train.device`) and on
//! the command line (`--device`). (The compute dtype, `train.compute_dtype`, is the config's
//! `Dtype`.)
//!
//! A binary built without the cargo feature `cuda` knows the names but refuses `cuda` at once,
//! saying how to get a CUDA build, instead of failing later inside candle.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// What a device name means, checked without touching any hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// GPU ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> Result<DeviceSpec> {
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.split_once(':') {
                Some(("cuda", n)) => {
                    let n = n.parse().with_context(|| format!("device `{s}`: the GPU number after `cuda:` must be a whole number, e.g. cuda:1"))?;
                    Ok(DeviceSpec::Cuda(n))
                }
                _ => bail!("device `{s}`: expected cpu, cuda or cuda:N"),
            },
        }
    }

    /// Open the device. A CUDA device in a binary built without CUDA is an error that says how to
    /// rebuild.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(n),
        }
    }
}

/// Parse and open a device name (see [`DeviceSpec::parse`]).
pub fn open(name: &str) -> Result<Device> {
    DeviceSpec::parse(name)?.open()
}

/// Whether this binary was built with the cargo feature `cuda`.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).with_context(|| format!("cannot open CUDA device {n} (cuda:{n}): is there a GPU with that number, and can the driver library libcuda.so.1 be loaded?"))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    bail!(
        "device cuda:{n} asked for, but this rlp was built without CUDA support: build the CUDA \
         binary with `cargo build --release --features cuda` on a machine with the CUDA toolkit, or \
         with scripts/build-cuda.sh on one without (it fetches nvcc from PyPI), or use the CPU \
         (device cpu)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "metal", ""] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(open("cpu").unwrap().is_cpu());
    }
}
