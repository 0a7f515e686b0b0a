//! Input validation: every caller-supplied value is checked here before anything is allocated,
//! copied or audited ("parse, don't validate": downstream code takes the checked types).

mod gpu_device;
mod model_size;
mod shard_id;

pub use gpu_device::validate_gpu_device;
pub use model_size::{DEFAULT_MAX_MODEL_BYTES, validate_model_size};
pub use shard_id::{MAX_SHARD_ID_BYTES, ShardId};
