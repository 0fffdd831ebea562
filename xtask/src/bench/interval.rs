//! Ratios with their uncertainty: a bootstrap interval over paired rounds. Rounds are
//! interleaved, so round r of one observer and round r of the baseline ran under the same
//! machine conditions: their ratio is one sample, and resampling rounds gives the interval.

/// A ratio and its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Interval {
    /// Mean of the per-round ratios.
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} [{:.3}–{:.3}]", self.estimate, self.low, self.high)
    }
}

const RESAMPLES: usize = 10_000;

/// The mean of `numerators[r] / denominators[r]` over rounds, with the 2.5th and 97.5th
/// percentiles of that mean over rounds resampled with replacement. None without rounds.
pub(super) fn paired_ratio(numerators: &[f64], denominators: &[f64]) -> Option<Interval> {
    let ratios: Vec<f64> = numerators
        .iter()
        .zip(denominators)
        .filter(|(_, d)| **d > 0.0)
        .map(|(n, d)| n / d)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    let mean = |values: &mut dyn Iterator<Item = f64>| {
        let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
        sum / count as f64
    };
    let estimate = mean(&mut ratios.iter().copied());
    // A fixed seed: the same rounds give the same interval.
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| mean(&mut (0..ratios.len()).map(|_| ratios[random.below(ratios.len())])))
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |quantile: f64| means[((RESAMPLES - 1) as f64 * quantile).round() as usize];
    Some(Interval {
        estimate,
        low: at(0.025),
        high: at(0.975),
    })
}

/// xorshift64*: enough randomness for resampling, no dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_ratios_give_a_point() {
        let interval = paired_ratio(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            (interval.estimate, interval.low, interval.high),
            (2.0, 2.0, 2.0)
        );
    }

    #[test]
    fn spread_ratios_give_an_interval_around_their_mean() {
        let numerators: Vec<f64> = (0..20).map(|r| 100.0 + (r % 5) as f64).collect();
        let denominators = vec![100.0; 20];
        let interval = paired_ratio(&numerators, &denominators).unwrap();
        assert!((interval.estimate - 1.02).abs() < 1e-9, "{interval:?}");
        assert!(interval.low < interval.estimate && interval.estimate < interval.high);
        assert!(interval.low > 1.0 && interval.high < 1.04, "{interval:?}");
    }

    #[test]
    fn no_rounds_no_interval() {
        assert_eq!(paired_ratio(&[], &[]), None);
        assert_eq!(paired_ratio(&[1.0], &[0.0]), None);
    }
}
