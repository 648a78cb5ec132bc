//! The device a training or a prediction runs on: burn's CPU backend, or wgpu with `gpu`.

use burn::prelude::*;

use crate::config::{DeviceChoice, TrainError};

/// The device a choice names, with autodiff for training.
pub fn device(choice: DeviceChoice) -> Result<Device, TrainError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Gpu => gpu_device(),
    }
}

#[cfg(feature = "gpu")]
pub(crate) fn gpu_device() -> Result<Device, TrainError> {
    // burn registers the wgpu runtime once per process; later calls reuse that device.
    static GPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| Device::wgpu_options().init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| {
            TrainError::Device(format!(
                "--device gpu: no GPU adapter found ({e}); install a Vulkan, Metal or DirectX \
                 driver, or train with --device cpu"
            ))
        })
}

#[cfg(not(feature = "gpu"))]
pub(crate) fn gpu_device() -> Result<Device, TrainError> {
    Err(TrainError::Device(
        "--device gpu: this kiln was built without the `gpu` feature; rebuild with \
         `cargo build --release --features gpu`, or train with --device cpu"
            .to_string(),
    ))
}
