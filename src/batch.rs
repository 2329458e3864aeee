//! Length-sorted batching by a token budget, with the original order restored.
//!
//! Sorting by length keeps padding (wasted work) small; the budget bounds the
//! padded source tokens of one batch, so memory stays flat whatever the input.

/// Group item indices into batches: longest first, each batch's padded size
/// (items x longest item) within `max_tokens`, at most `max_items` items.
/// An item longer than the budget gets a batch of its own.
pub fn plan(lengths: &[usize], max_tokens: usize, max_items: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable sort: equal lengths keep their input order, so plans are deterministic.
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i].max(1);
        let would_be = (current.len() + 1) * longest.max(len);
        if !current.is_empty() && (would_be > max_tokens || current.len() >= max_items.max(1)) {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Put per-batch results back in input order.
pub fn restore<T>(n: usize, batches: &[Vec<usize>], results: Vec<Vec<T>>) -> Vec<T> {
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (batch, res) in batches.iter().zip(results) {
        for (&i, r) in batch.iter().zip(res) {
            slots[i] = Some(r);
        }
    }
    slots
        .into_iter()
        .map(|s| s.expect("every item is in exactly one batch"))
        .collect()
}
