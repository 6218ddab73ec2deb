//! The domain of mend, with no network or database I/O: ids, messages, durations, templates,
//! jq programs and the topology model with its loader (which reads the topology files) and
//! validator.

pub mod clock;
pub mod config;
pub mod duration;
pub mod ids;
pub mod jq;
pub mod load;
pub mod message;
pub mod rate;
pub mod template;
pub mod topology;
