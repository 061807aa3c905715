//! The node's own background work: measuring load (and shedding newcomers past it), and
//! dropping the origin's streams nobody uses.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Node;

/// How often `watch` measures.
const LOAD_PROBE: Duration = Duration::from_millis(100);

/// The next overload state, given how late a task woke: on at `limit`, off only below half
/// of it, so the state does not flap at the edge.
pub fn next_overload(overloaded: bool, lag: Duration, limit: Duration) -> bool {
    if overloaded {
        lag >= limit / 2
    } else {
        lag >= limit
    }
}

/// Load shedding. A node past its CPU serves every listener late, and each handshake it
/// takes on makes that worse (the 10,000-listener benchmark on one core: 973 hello timeouts
/// and gaps for listeners already in). So a task measures how late it wakes from a short
/// timer, the time every task waits for the CPU, and while that exceeds `overload-lag-ms`,
/// new connections are refused at once (QUIC CONNECTION_REFUSED, HTTP 503), cheaply, so
/// clients can go to another relay, and the listeners already here keep their audio.
pub(crate) async fn watch(node: std::sync::Weak<Node>) {
    let Some(limit) = node.upgrade().map(|n| n.cfg.overload_lag_ms.get()) else {
        return;
    };
    loop {
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(LOAD_PROBE).await;
        let Some(node) = node.upgrade() else { return };
        let lag = t0.elapsed().saturating_sub(LOAD_PROBE);
        node.stats
            .lag_ms
            .store(lag.as_millis() as u64, Ordering::Relaxed);
        let was = node.overloaded();
        let now = next_overload(was, lag, limit);
        if now != was {
            node.set_overloaded(now);
            if now {
                warn!(
                    lag_ms = lag.as_millis() as u64,
                    limit_ms = limit.as_millis() as u64,
                    "overloaded: refusing new connections"
                );
            } else {
                info!(
                    lag_ms = lag.as_millis() as u64,
                    shed_total = node.stats.shed_total.load(Ordering::Relaxed),
                    "load back to normal: taking new connections"
                );
            }
        }
    }
}

/// Drops origin streams nobody publishes or listens to.
pub(crate) async fn sweep(node: std::sync::Weak<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        for slot in node.registry.list() {
            let live = slot.broadcast().is_some_and(|b| !b.is_finished());
            if !live && node.registry.remove_if_idle(&slot) {
                debug!(path = %slot.path, "idle stream removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_overload;
    use std::time::Duration;

    #[test]
    fn overload_turns_on_at_the_limit_and_off_below_half_of_it() {
        let ms = Duration::from_millis;
        let limit = ms(1000);
        assert!(!next_overload(false, ms(999), limit));
        assert!(next_overload(false, ms(1000), limit));
        // Once on, it stays on until the lag is below half the limit.
        assert!(next_overload(true, ms(600), limit));
        assert!(next_overload(true, ms(500), limit));
        assert!(!next_overload(true, ms(499), limit));
        assert!(!next_overload(false, ms(700), limit));
    }
}
