//! `GET /api/forecast?pool=NAME`: a pool's request-rate series, its forecasts, the capacity of
//! one backend and the recommended backend count, with the reasoning in words.

use crate::admin::response::{json, not_found, Reply};
use crate::Shared;

/// The pool named by the query (`pool=NAME`, percent-decoded; the first occurrence wins).
fn pool_of(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "pool")
        .map(|(_, v)| v.into_owned())
}

/// The latest forecast of the pool named in the query; 404 for a pool that does not exist or
/// has no `[pools.NAME.autoscale]`, 503 before its first step has ended.
pub(crate) fn get(shared: &Shared, query: Option<&str>) -> Reply {
    let config = shared.config.load();
    let Some(name) = pool_of(query) else {
        let autoscaled: Vec<&str> = config
            .pools
            .iter()
            .filter(|p| p.autoscale.is_some())
            .map(|p| p.name.as_str())
            .collect();
        return not_found(format!(
            "name a pool: /api/forecast?pool=NAME (pools with [pools.NAME.autoscale]: {autoscaled:?})\n"
        ));
    };
    let Some(pool) = config.pool(&name) else {
        return not_found(format!("no pool {name:?}\n"));
    };
    if pool.autoscale.is_none() {
        return not_found(format!(
            "pool {name:?} is not forecast: add a [pools.{name}.autoscale] section\n"
        ));
    }
    match shared.forecasts.get(&name) {
        Some(view) => json(&view),
        None => {
            let step = pool
                .autoscale
                .as_ref()
                .map_or(0.0, |a| a.step.as_secs_f64());
            crate::admin::response::text(
                http::StatusCode::SERVICE_UNAVAILABLE,
                format!("pool {name:?}: no step has ended yet (one every {step} s)\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_read_from_the_query() {
        assert_eq!(pool_of(Some("pool=web")).as_deref(), Some("web"));
        assert_eq!(
            pool_of(Some("x=1&pool=a%2Db&pool=c")).as_deref(),
            Some("a-b")
        );
        assert_eq!(pool_of(Some("")), None);
        assert_eq!(pool_of(None), None);
    }
}
