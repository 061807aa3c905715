//! A node's own pages: the status page and the list of streams (public), the metrics and
//! health (the admin port).

pub(crate) mod metrics;
pub(crate) mod status;
