//! Counting what lock safety forbids, from the holds each holder recorded by its own clock
//! readings: two holders at once, and fencing tokens that go back in grant order.

/// One hold of a lock: who held it, from when to when (by the holder's own readings of a clock
/// every holder shares), and the grant's fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold<T> {
    /// The holder (a process or task number).
    pub holder: usize,
    /// When its acquire returned.
    pub start: T,
    /// When it began to release.
    pub end: T,
    /// The grant's fencing token.
    pub token: u64,
}

/// Pairs of holds by different holders that overlap in time.
pub fn overlaps<T: Ord + Copy>(holds: &[Hold<T>]) -> usize {
    let mut holds = holds.to_vec();
    holds.sort_by_key(|h| h.start);
    holds
        .iter()
        .enumerate()
        .map(|(i, a)| {
            holds[i + 1..]
                .iter()
                .take_while(|b| b.start < a.end)
                .filter(|b| b.holder != a.holder)
                .count()
        })
        .sum()
}

/// Grants, in the order they were made, whose token is below the one before, or equal to it
/// for another holder. (A holder whose release failed and who acquires again gets its own lease
/// back, with its token.)
pub fn token_regressions<T: Ord + Copy>(holds: &[Hold<T>]) -> usize {
    let mut holds = holds.to_vec();
    holds.sort_by_key(|h| h.start);
    holds
        .windows(2)
        .filter(|w| {
            w[1].token < w[0].token || (w[1].token == w[0].token && w[1].holder != w[0].holder)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(holder: usize, start: u32, end: u32, token: u64) -> Hold<u32> {
        Hold {
            holder,
            start,
            end,
            token,
        }
    }

    #[test]
    fn overlapping_holds_of_different_holders_and_tokens_going_back_are_counted() {
        let safe = [hold(0, 0, 10, 1), hold(1, 10, 20, 2), hold(0, 20, 30, 2)];
        assert_eq!((overlaps(&safe), token_regressions(&safe)), (0, 1));
        let twice = [hold(0, 0, 10, 5), hold(1, 5, 15, 4), hold(1, 15, 16, 6)];
        assert_eq!((overlaps(&twice), token_regressions(&twice)), (1, 1));
        let same_holder = [hold(0, 0, 10, 1), hold(0, 5, 15, 1)];
        assert_eq!(
            (overlaps(&same_holder), token_regressions(&same_holder)),
            (0, 0)
        );
    }
}
