//! "Did you mean" suggestions for misspelt keys and names, based on edit distance.

/// Levenshtein distance between two strings, counted in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `input`, if any is close enough to be a plausible typo.
///
/// A candidate qualifies when it starts with the input (an abbreviation of at least
/// three characters), shares most of its leading characters with it, or lies within
/// a small edit distance of it.
pub fn suggest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let input = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .filter_map(|cand| {
            let lower = cand.to_ascii_lowercase();
            if lower == input {
                return None;
            }
            let dist = edit_distance(&input, &lower);
            let len = input.chars().count();
            let shared = input
                .chars()
                .zip(lower.chars())
                .take_while(|(a, b)| a == b)
                .count();
            // An abbreviation ("least_conn") or a shared stem ("retry"/"retries").
            let prefix =
                (len >= 3 && lower.starts_with(&input)) || (shared >= 4 && shared * 3 >= len * 2);
            let limit = 2.max(lower.chars().count() / 3);
            if prefix || dist <= limit {
                Some(((!prefix, dist), cand))
            } else {
                None
            }
        })
        .min_by_key(|(score, _)| *score)
        .map(|(_, cand)| cand)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
    }

    #[test]
    fn suggestions() {
        let keys = ["algorithm", "weights", "retries"];
        assert_eq!(suggest("algoritm", keys), Some("algorithm"));
        assert_eq!(suggest("retry", keys), Some("retries"));
        assert_eq!(suggest("zzzzzz", keys), None);
        let algos = [
            "round_robin",
            "weighted_round_robin",
            "least_connections",
            "p2c_ewma",
        ];
        assert_eq!(suggest("least_conn", algos), Some("least_connections"));
        assert_eq!(suggest("roundrobin", algos), Some("round_robin"));
    }
}
