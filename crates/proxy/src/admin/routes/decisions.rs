//! `GET /api/decisions?limit=N&pool=NAME`: the control loop's recent decisions, newest first.

use crate::admin::response::{json, Reply};
use crate::Shared;

/// Decisions returned when the query names no valid `limit`.
const DEFAULT_LIMIT: usize = 20;

/// The query parameters `/api/decisions` reads.
#[derive(Debug, PartialEq, Eq)]
struct DecisionsQuery {
    /// At most this many decisions.
    limit: usize,
    /// Only this pool's decisions.
    pool: Option<String>,
}

impl DecisionsQuery {
    /// Read the percent-decoded query string; the first occurrence of a key wins, and a
    /// `limit` that is not a number is the default.
    fn parse(query: Option<&str>) -> Self {
        let mut limit = None;
        let mut pool = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "limit" if limit.is_none() => limit = Some(value.parse().ok()),
                "pool" if pool.is_none() => pool = Some(value.into_owned()),
                _ => {}
            }
        }
        DecisionsQuery {
            limit: limit.flatten().unwrap_or(DEFAULT_LIMIT),
            pool,
        }
    }
}

/// The newest decisions, optionally of one pool, as `{"decisions": [...], "feature_names":
/// [...]}`; `feature_names` names the columns of each decision's `features` rows.
pub(crate) fn get(shared: &Shared, query: Option<&str>) -> Reply {
    let q = DecisionsQuery::parse(query);
    let decisions = shared.decisions.recent(q.limit, q.pool.as_deref());
    json(&serde_json::json!({
        "decisions": decisions,
        "feature_names": fulcrum_control::FEATURE_NAMES,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> DecisionsQuery {
        DecisionsQuery::parse(Some(q))
    }

    #[test]
    fn query_is_percent_decoded() {
        assert_eq!(
            parse("limit=5&pool=a%20b"),
            DecisionsQuery {
                limit: 5,
                pool: Some("a b".into())
            }
        );
        assert_eq!(parse("pool=web+1%2Fx").pool.as_deref(), Some("web 1/x"));
        assert_eq!(parse("li%6Dit=7").limit, 7);
    }

    #[test]
    fn missing_or_bad_values_fall_back() {
        assert_eq!(
            DecisionsQuery::parse(None),
            DecisionsQuery {
                limit: DEFAULT_LIMIT,
                pool: None
            }
        );
        assert_eq!(parse("limit=").limit, DEFAULT_LIMIT);
        assert_eq!(parse("limit=-1").limit, DEFAULT_LIMIT);
        assert_eq!(parse("other=1&limit=3&limit=9").limit, 3);
        assert_eq!(parse("pool=a&pool=b").pool.as_deref(), Some("a"));
    }
}
