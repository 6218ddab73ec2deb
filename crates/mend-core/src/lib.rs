//! The domain of mend, with no I/O: ids, messages, durations, templates, jq programs and the
//! topology model with its loader and validator.

pub mod clock;
pub mod config;
pub mod duration;
pub mod ids;
pub mod jq;
pub mod load;
pub mod message;
pub mod template;
pub mod topology;
