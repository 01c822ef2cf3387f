//! What both services set up the same way.
//!
//! - [`settings`]: the settings of design §9 that gateway and worker share.
//! - [`logging`]: the tracing subscriber (text or JSON lines).
//! - [`shutdown`]: SIGTERM and SIGINT as a cancellation token.

pub mod logging;
pub mod settings;
pub mod shutdown;

pub use settings::{LogFormat, Profile, SharedSettings};
