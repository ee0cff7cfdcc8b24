//! Which slices of a refused batch to try next, to find the rows PostgreSQL refuses.
//!
//! Pure planning, no I/O: the store runs each slice in a savepoint and reports back. A
//! slice that fails for its data is halved until single rows remain; a single row that
//! fails alone is set aside. Slices come out left to right, so the rows written keep
//! their changelog order (which the `orders` upsert needs to merge status times).
//!
//! When the left half of a failed slice succeeds, the right half holds what failed and is
//! halved without being tried whole: one round trip saved per level, about `log2(n)`
//! tries for one bad row among `n`. A single row is always tried before it is set aside,
//! so a row is rejected only for a failure it causes alone, in the transaction that
//! records it (a failure that came from combining rows, such as one statement touching
//! an order twice, ends with every row written).

use std::ops::Range;

#[derive(Debug)]
struct Pending {
    range: Range<usize>,
    /// The left half of the same failed slice, for a right half.
    left_sibling: Option<Range<usize>>,
}

/// The plan of one search, over row indexes `0..rows`.
#[derive(Debug)]
pub struct Bisect {
    /// Next slice on top.
    stack: Vec<Pending>,
    /// The slice that succeeded last, if the last report was a success.
    last_ok: Option<Range<usize>>,
}

impl Bisect {
    /// The plan for `rows` rows that failed together: their halves first (a single row
    /// is tried again on its own).
    pub fn after_failure(rows: usize) -> Bisect {
        let mut plan = Bisect {
            stack: Vec::new(),
            last_ok: None,
        };
        plan.split(0..rows);
        plan
    }

    /// The next slice to try, or `None` when every row is written or set aside.
    pub fn next_slice(&mut self) -> Option<Range<usize>> {
        while let Some(p) = self.stack.pop() {
            let known_to_fail =
                p.range.len() > 1 && p.left_sibling.is_some() && p.left_sibling == self.last_ok;
            if known_to_fail {
                self.last_ok = None;
                self.split(p.range);
                continue;
            }
            return Some(p.range);
        }
        None
    }

    /// `slice` was written.
    pub fn succeeded(&mut self, slice: Range<usize>) {
        self.last_ok = Some(slice);
    }

    /// `slice` failed for its data. Returns the row to set aside when it is a single
    /// row; otherwise its halves are tried next.
    pub fn failed(&mut self, slice: Range<usize>) -> Option<usize> {
        self.last_ok = None;
        if slice.len() == 1 {
            Some(slice.start)
        } else {
            self.split(slice);
            None
        }
    }

    fn split(&mut self, range: Range<usize>) {
        match range.len() {
            0 => {}
            1 => self.stack.push(Pending {
                range,
                left_sibling: None,
            }),
            n => {
                let mid = range.start + n / 2;
                let left = range.start..mid;
                self.stack.push(Pending {
                    range: mid..range.end,
                    left_sibling: Some(left.clone()),
                });
                self.stack.push(Pending {
                    range: left,
                    left_sibling: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a search did: rows set aside, slices written (in order), slices tried.
    #[derive(Debug, Default)]
    struct Outcome {
        rejected: Vec<usize>,
        written: Vec<Range<usize>>,
        tries: usize,
    }

    /// Runs a search over `rows` rows against a database for which a slice fails when
    /// `fails` says so.
    fn search(rows: usize, fails: impl Fn(&Range<usize>) -> bool) -> Outcome {
        let mut out = Outcome::default();
        let mut plan = Bisect::after_failure(rows);
        while let Some(slice) = plan.next_slice() {
            out.tries += 1;
            assert!(out.tries <= 4 * rows + 4, "the search does not end");
            if fails(&slice) {
                out.rejected.extend(plan.failed(slice));
            } else {
                out.written.push(slice.clone());
                plan.succeeded(slice);
            }
        }
        out
    }

    fn containing(bad: &[usize]) -> impl Fn(&Range<usize>) -> bool + '_ {
        move |slice| bad.iter().any(|b| slice.contains(b))
    }

    /// Every row is written once or rejected, in order, and nothing twice.
    fn assert_covers(rows: usize, out: &Outcome) {
        let mut seen: Vec<usize> = out
            .written
            .iter()
            .flat_map(Clone::clone)
            .chain(out.rejected.iter().copied())
            .collect();
        let written_in_order: Vec<usize> = out.written.iter().flat_map(Clone::clone).collect();
        assert!(
            written_in_order.windows(2).all(|w| w[0] < w[1]),
            "slices out of order: {:?}",
            out.written
        );
        seen.sort_unstable();
        assert_eq!(seen, (0..rows).collect::<Vec<_>>());
    }

    #[test]
    fn one_bad_row_among_a_thousand_is_found_in_about_log2_tries() {
        for bad in [0, 1, 499, 500, 731, 998, 999] {
            let out = search(1000, containing(&[bad]));
            assert_eq!(out.rejected, vec![bad]);
            assert_covers(1000, &out);
            // Two halves, then at most two tries per level of a 10-level tree, and in
            // practice one per level where the left half succeeds.
            assert!(out.tries <= 2 * 10 + 2, "{} tries for row {bad}", out.tries);
        }
        // The last row: every left half succeeds and every right half is split untried,
        // so ten left halves and the row itself.
        assert_eq!(search(1000, containing(&[999])).tries, 11);
    }

    #[test]
    fn several_bad_rows_adjacent_or_at_the_ends_are_all_found() {
        let bad = [0, 1, 2, 57, 58, 600, 999];
        let out = search(1000, containing(&bad));
        assert_eq!(out.rejected, bad.to_vec());
        assert_covers(1000, &out);
    }

    #[test]
    fn a_batch_of_bad_rows_rejects_every_row_and_writes_none() {
        let out = search(9, |_| true);
        assert_eq!(out.rejected, (0..9).collect::<Vec<_>>());
        assert!(out.written.is_empty());
    }

    #[test]
    fn a_single_row_is_tried_alone_before_it_is_rejected() {
        let out = search(1, |_| true);
        assert_eq!((out.rejected, out.tries), (vec![0], 1));
        let out = search(1, |_| false);
        assert!(out.rejected.is_empty());
        assert_eq!(out.written.len(), 1);
        assert_eq!(out.written[0], 0..1);
    }

    #[test]
    fn a_failure_of_rows_combined_ends_with_every_row_written() {
        // Like one statement touching one order twice: only slices of more than 100 rows
        // fail, no single row does.
        let out = search(1000, |slice| slice.len() > 100);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_covers(1000, &out);
    }

    #[test]
    fn an_empty_batch_needs_no_try() {
        assert_eq!(search(0, |_| true).tries, 0);
    }
}
