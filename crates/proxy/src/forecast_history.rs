//! An autoscaled pool's past request rate read from Prometheus (`history_prometheus`), for a
//! process that starts without a history of its own — a new pod of a Deployment, whose
//! `history_file` went with the old one — so its forecast does not wait two cycles to find
//! the pool's season. The query runs once, on a thread of its own, while the pool already
//! counts; its answer is put in front of what was counted since.

use std::sync::mpsc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Points Prometheus answers per range query at most is 11,000; the ranges asked are shorter.
const POINTS_PER_QUERY: f64 = 10_000.0;
/// Longest one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_BODY_BYTES: usize = 32 << 20;

/// The query run when the pool's configuration gives none: the pool's rate as every fulcrum
/// process exported it, averaged over the processes (each counts its share of the traffic).
pub fn default_query(pool: &str) -> String {
    format!("avg(fulcrum_pool_requests_per_second{{pool=\"{pool}\"}})")
}

/// One `GET` on a fresh connection: the body of a 200, or why not.
async fn get(connect: &str, host: &str, path_and_query: &str) -> Result<Bytes, String> {
    let stream = tokio::net::TcpStream::connect(connect)
        .await
        .map_err(|e| format!("cannot connect to {connect}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {connect}: {e}"))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path_and_query)
        .header(hyper::header::HOST, host)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request to {connect}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {connect}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let why = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        return Err(format!("HTTP {status}: {why}"));
    }
    Ok(body)
}

/// The `(t_s, value)` points of a `query_range` answer holding at most one series.
pub fn parse_matrix(body: &[u8]) -> Result<Vec<(f64, f64)>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("the query failed: {}", v["error"]));
    }
    if v["data"]["resultType"] != "matrix" {
        return Err(format!(
            "the query answers a {}, not a range of one series",
            v["data"]["resultType"]
        ));
    }
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    match result.len() {
        0 => return Ok(Vec::new()),
        1 => {}
        n => {
            return Err(format!(
                "the query answers {n} series, not one: aggregate it (avg, sum) to the pool's rate"
            ))
        }
    }
    let points = result[0]["values"].as_array().cloned().unwrap_or_default();
    Ok(points
        .iter()
        .filter_map(|p| {
            let t = p[0].as_f64()?;
            let x: f64 = p[1].as_str()?.parse().ok()?;
            (x.is_finite() && x >= 0.0).then_some((t, x))
        })
        .collect())
}

/// Run `query` over `[start_s, end_s]` at `step_s` on the Prometheus at `url`, in ranges
/// Prometheus accepts, and return the points in time order.
async fn fetch(
    url: &str,
    query: &str,
    start_s: f64,
    end_s: f64,
    step_s: f64,
) -> Result<Vec<(f64, f64)>, String> {
    let (connect, host, prefix) = fulcrum_config::split_http_url(url)?;
    let span = POINTS_PER_QUERY * step_s;
    let mut rows = Vec::new();
    let mut from = start_s;
    while from <= end_s {
        let to = (from + span).min(end_s);
        let params = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .append_pair("start", &format!("{from:.3}"))
            .append_pair("end", &format!("{to:.3}"))
            .append_pair("step", &format!("{step_s}"))
            .finish();
        let path = format!("{prefix}/api/v1/query_range?{params}");
        let body = tokio::time::timeout(REQUEST_TIMEOUT, get(&connect, &host, &path))
            .await
            .map_err(|_| format!("{url} did not answer in {} s", REQUEST_TIMEOUT.as_secs()))??;
        rows.extend(parse_matrix(&body)?);
        // The next range starts one step on: the end of a range is one of its points.
        from = to + step_s;
    }
    Ok(rows)
}

/// Run `query` over `[start_s, end_s]` at `step_s` on the Prometheus at `url` on the calling
/// thread (with a runtime of its own), for a command that has nothing else to do meanwhile.
pub fn fetch_blocking(
    url: &str,
    query: &str,
    start_s: f64,
    end_s: f64,
    step_s: f64,
) -> Result<Vec<(f64, f64)>, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(fetch(url, query, start_s, end_s, step_s))
}

/// Start the query on a thread of its own; its answer arrives on the returned channel.
pub fn spawn_fetch(
    url: String,
    query: String,
    start_s: f64,
    end_s: f64,
    step_s: f64,
) -> mpsc::Receiver<Result<Vec<(f64, f64)>, String>> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("fulcrum-history".into())
        .spawn(move || {
            let _ = tx.send(fetch_blocking(&url, &query, start_s, end_s, step_s));
        });
    if let Err(e) = spawned {
        let (tx, rx) = mpsc::channel();
        let _ = tx.send(Err(format!("cannot start the query's thread: {e}")));
        return rx;
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_answer_of_one_series_is_read_and_of_several_is_refused() {
        let one = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[1700000000,"12.5"],[1700000010,"NaN"],[1700000020,"14"]]}]}}"#;
        assert_eq!(
            parse_matrix(one).unwrap(),
            vec![(1_700_000_000.0, 12.5), (1_700_000_020.0, 14.0)]
        );
        let none = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(parse_matrix(none).unwrap(), vec![]);
        let two = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"instance":"a"},"values":[]},{"metric":{"instance":"b"},"values":[]}]}}"#;
        let e = parse_matrix(two).unwrap_err();
        assert!(e.contains("answers 2 series, not one: aggregate it"), "{e}");
        let e = parse_matrix(br#"{"status":"error","error":"parse error"}"#).unwrap_err();
        assert!(e.contains("parse error"), "{e}");
    }
}
