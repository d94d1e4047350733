//! Barnes-Hut t-SNE of feature vectors (the sepsis model's 128-d pooled features, the
//! autoencoder's 1152-d codes) into 2-d, through the `bhtsne` crate, made deterministic in a
//! seed: the crate draws its start layout and its vantage-point tree from an unseeded thread
//! RNG, so the start layout is drawn here from the seed and the nearest neighbours are found
//! here exactly (ties broken by index) and handed to `barnes_hut_with_neighbors`; and its
//! optimisation runs on a one-thread rayon pool, because on several threads its Barnes-Hut
//! tree sums in a varying order and the layouts of two equal runs drift apart (seen in
//! tests/viz.rs).

use crate::error::{Error, Result};
use crate::model::resnet::Rng;
use rayon::prelude::*;

const OP: &str = "tsne";

/// Most points [`tsne`] takes: the exact neighbour search costs n² · dims and the
/// optimisation runs on one thread (4,000 points of 128 dims: about 10 s on a 2-core CI
/// machine, n log n), so a map of this many points takes a minute or more.
pub const MAX_TSNE_POINTS: usize = 20_000;
/// Fewest points: with 3 or fewer the perplexity bound `perplexity <= (n - 1) / 3` leaves less
/// than one effective neighbour, and a layout would say nothing. Fewer is an `Err`.
pub const MIN_TSNE_POINTS: usize = 4;
/// Largest dimension of one point.
pub const MAX_TSNE_DIMS: usize = 1 << 16;
/// The seed used when the caller gives none (`medkern ... --tsne-seed`).
pub const DEFAULT_TSNE_SEED: u64 = 42;

/// Options of [`tsne_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TsneOptions {
    /// Seed of the start layout; equal seeds and inputs give bit-identical coordinates.
    pub seed: u64,
    /// Wanted perplexity (effective neighbours); clamped to `(n - 1) / 3` for small n.
    pub perplexity: f64,
    /// Gradient-descent iterations (1..=10,000).
    pub epochs: usize,
    /// Barnes-Hut opening angle, in (0, 2]; smaller is more exact and slower.
    pub theta: f64,
}

impl Default for TsneOptions {
    /// Seed [`DEFAULT_TSNE_SEED`], perplexity 30, 1000 iterations, theta 0.5 (the usual
    /// settings of van der Maaten's reference implementation).
    fn default() -> Self {
        TsneOptions {
            seed: DEFAULT_TSNE_SEED,
            perplexity: 30.0,
            epochs: 1000,
            theta: 0.5,
        }
    }
}

fn invalid(arg: &'static str, detail: String) -> Error {
    Error::Invalid {
        op: OP,
        arg,
        detail,
    }
}

/// The perplexity used for `n` points: the wanted one, at most `(n - 1) / 3` (t-SNE needs
/// three times the perplexity in neighbours).
pub fn effective_perplexity(wanted: f64, n: usize) -> f64 {
    wanted.min(n.saturating_sub(1) as f64 / 3.0)
}

/// 2-d t-SNE of `points` (row-major, `n` rows of `dims` values) with the default options and
/// `seed`. See [`tsne_with`].
pub fn tsne(points: &[f64], dims: usize, seed: u64) -> Result<Vec<[f64; 2]>> {
    tsne_with(
        points,
        dims,
        &TsneOptions {
            seed,
            ..TsneOptions::default()
        },
    )
}

/// 2-d Barnes-Hut t-SNE of `points` (row-major, `n` rows of `dims` finite values), one
/// coordinate pair per row, in row order. Deterministic: equal inputs and options give
/// bit-identical output. Errors (before anything is allocated): `dims` 0 or over
/// [`MAX_TSNE_DIMS`], a length that is not a multiple of `dims`, fewer than
/// [`MIN_TSNE_POINTS`] or more than [`MAX_TSNE_POINTS`] rows, a non-finite value, options out
/// of range.
pub fn tsne_with(points: &[f64], dims: usize, o: &TsneOptions) -> Result<Vec<[f64; 2]>> {
    if dims == 0 || dims > MAX_TSNE_DIMS {
        return Err(invalid(
            "dims",
            format!("{dims}; expected 1..={MAX_TSNE_DIMS}"),
        ));
    }
    if points.len() % dims != 0 {
        return Err(invalid(
            "points",
            format!(
                "{} values, not a whole number of {dims}-d rows",
                points.len()
            ),
        ));
    }
    let n = points.len() / dims;
    if !(MIN_TSNE_POINTS..=MAX_TSNE_POINTS).contains(&n) {
        return Err(invalid(
            "points",
            format!("{n} points; expected {MIN_TSNE_POINTS}..={MAX_TSNE_POINTS}"),
        ));
    }
    if let Some(i) = points.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            "points",
            format!(
                "point {} has a non-finite value {} at {}",
                i / dims,
                points[i],
                i % dims
            ),
        ));
    }
    if !(o.perplexity.is_finite() && o.perplexity >= 1.0) {
        return Err(invalid(
            "perplexity",
            format!("{}; expected a finite value >= 1", o.perplexity),
        ));
    }
    if !(1..=10_000).contains(&o.epochs) {
        return Err(invalid(
            "epochs",
            format!("{}; expected 1..=10000", o.epochs),
        ));
    }
    if !(o.theta > 0.0 && o.theta <= 2.0) {
        return Err(invalid("theta", format!("{}; expected (0, 2]", o.theta)));
    }
    let perplexity = effective_perplexity(o.perplexity, n);
    // bhtsne asserts n - 1 >= 3 * floor(perplexity); k = 3 * perplexity neighbours per point.
    let k = ((3.0 * perplexity).floor() as usize).clamp(1, n - 1);
    let rows: Vec<&[f64]> = points.chunks_exact(dims).collect();
    let neighbors = exact_neighbors(&rows, k);
    let mut rng = Rng::new(o.seed);
    // The usual start: N(0, 1e-4²) per coordinate.
    let init: Vec<f64> = (0..2 * n).map(|_| 1e-4 * rng.normal()).collect();
    let index: Vec<usize> = (0..n).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| invalid("threads", format!("one-thread pool: {e}")))?;
    let y = pool.install(|| {
        let mut t: bhtsne::tSNE<f64, usize, 2> = bhtsne::tSNE::new(&index);
        t.perplexity(perplexity)
            .epochs(o.epochs)
            .initial_embedding(init)
            .barnes_hut_with_neighbors(o.theta, &neighbors);
        t.embedding()
    });
    if y.len() != 2 * n || y.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid {
            op: OP,
            arg: "result",
            detail: format!(
                "the optimisation gave {} values (expected {}) or a non-finite one",
                y.len(),
                2 * n
            ),
        });
    }
    Ok(y.chunks_exact(2).map(|c| [c[0], c[1]]).collect())
}

/// The `k` nearest other rows of each row by Euclidean distance, nearest first, ties by the
/// lower index: an exact search, so the result (and the t-SNE that uses it) depends on nothing
/// but the input.
fn exact_neighbors(rows: &[&[f64]], k: usize) -> Vec<Vec<bhtsne::Neighbor<f64>>> {
    rows.par_iter()
        .enumerate()
        .map(|(i, a)| {
            let mut d: Vec<(f64, usize)> = rows
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, b)| {
                    let s: f64 = a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum();
                    (s, j)
                })
                .collect();
            let by = |p: &(f64, usize), q: &(f64, usize)| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1));
            if k < d.len() {
                d.select_nth_unstable_by(k, by);
                d.truncate(k);
            }
            d.sort_unstable_by(by);
            d.into_iter()
                .map(|(s, j)| bhtsne::Neighbor {
                    index: j,
                    distance: s.sqrt(),
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_exact_and_ordered() {
        let pts = [0.0, 3.0, 1.0, 7.0, 1.0];
        let rows: Vec<&[f64]> = pts.chunks(1).collect();
        let nb = exact_neighbors(&rows, 2);
        // Point 0 (at 0): 2 and 4 (both at 1; lower index first), then 1 (at 3).
        assert_eq!(nb[0].iter().map(|x| x.index).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(nb[3].iter().map(|x| x.index).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(nb[3][0].distance, 4.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(tsne(&[1.0; 6], 0, 1).is_err());
        assert!(tsne(&[1.0; 7], 2, 1).is_err());
        assert!(tsne(&[1.0, 2.0, 3.0], 1, 1).is_err()); // 3 points
        let mut p = vec![0.5; 8];
        p[5] = f64::NAN;
        assert!(tsne(&p, 2, 1).is_err());
        let o = TsneOptions {
            perplexity: 0.5,
            ..TsneOptions::default()
        };
        assert!(tsne_with(&[1.0, 2.0, 3.0, 4.0], 1, &o).is_err());
    }

    #[test]
    fn perplexity_is_clamped_for_few_points() {
        assert_eq!(effective_perplexity(30.0, 4), 1.0);
        assert_eq!(effective_perplexity(30.0, 1000), 30.0);
        let y = tsne(&[0.0, 0.1, 5.0, 5.2], 1, 3).unwrap();
        assert_eq!(y.len(), 4);
    }
}
