//! Rendezvous (highest random weight) hashing of a stream's path over a relay's parents:
//! how `parent-choice = "hash"` orders them, the same on every relay.

/// Rendezvous (highest random weight) hashing: the score of a parent for a stream. Every
/// relay computes the same one from the same names, whatever order it lists its parents in.
/// With weights, a parent of weight w wins a share w / sum of the streams (the
/// logarithm method: score = -w / ln(u), u uniform in (0, 1) from the hash).
pub fn rendezvous(parent: &str, path: &str, weight: u32) -> f64 {
    let weight = weight.max(1);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(parent.as_bytes());
    ctx.update(&[0]);
    ctx.update(path.as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    let u = ((u64::from_le_bytes(b) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight as f64) / u.ln()
}

/// The order in which a relay with these parents (`HOST:PORT` as listed, weight) tries them
/// for `path` under `parent-choice = "hash"`: highest rendezvous score first, ties by list
/// position. Every relay with the same parents computes the same order.
pub fn hash_order(parents: &[(&str, u32)], path: &str) -> Vec<usize> {
    let mut order: Vec<usize> = (0..parents.len()).collect();
    let score = |i: usize| rendezvous(parents[i].0, path, parents[i].1);
    order.sort_by(|a, b| score(*b).total_cmp(&score(*a)).then(a.cmp(b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parents(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("mid-{i}.example:4434")).collect()
    }

    fn primary(names: &[String], weights: &[u32], path: &str) -> usize {
        (0..names.len())
            .max_by(|a, b| {
                rendezvous(&names[*a], path, weights[*a]).total_cmp(&rendezvous(
                    &names[*b],
                    path,
                    weights[*b],
                ))
            })
            .unwrap()
    }

    #[test]
    fn hashing_spreads_streams_evenly_and_by_weight() {
        let names = parents(4);
        let mut count = [0usize; 4];
        for s in 0..10_000 {
            count[primary(&names, &[1; 4], &format!("stream-{s}"))] += 1;
        }
        // 2,500 each expected; a binomial's standard deviation here is ~43.
        assert!(count.iter().all(|c| (2300..=2700).contains(c)), "{count:?}");
        let mut count = [0usize; 4];
        for s in 0..10_000 {
            count[primary(&names, &[1, 1, 1, 3], &format!("stream-{s}"))] += 1;
        }
        // Weight 3 of 6: half the streams.
        assert!((4700..=5300).contains(&count[3]), "{count:?}");
    }

    #[test]
    fn a_fifth_parent_takes_about_a_fifth_and_moves_nothing_else() {
        let four = parents(4);
        let mut five = four.clone();
        five.push("mid-new.example:4434".into());
        let mut moved_elsewhere = 0;
        let mut to_new = 0;
        for s in 0..10_000 {
            let path = format!("stream-{s}");
            let (a, b) = (
                primary(&four, &[1; 4], &path),
                primary(&five, &[1; 5], &path),
            );
            if b == 4 {
                to_new += 1;
            } else if a != b {
                moved_elsewhere += 1;
            }
        }
        assert_eq!(
            moved_elsewhere, 0,
            "only streams that go to the new parent move"
        );
        assert!((1800..=2200).contains(&to_new), "{to_new}");
    }
}
