//! A node's own pages: the status page and the list of streams (metrics will join them).

pub(crate) mod status;
