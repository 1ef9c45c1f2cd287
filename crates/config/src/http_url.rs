//! The `http://` URLs of the configuration (`history_prometheus`): what a key accepts is what
//! the proxy connects to.

/// `http://host:port[/prefix]` split into the address to connect to, the `Host` header and
/// the path prefix.
pub fn split_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let connect = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((connect, authority.to_string(), prefix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_where_to_connect_and_what_to_ask() {
        assert_eq!(
            split_http_url("http://prometheus.monitoring.svc:9090").unwrap(),
            (
                "prometheus.monitoring.svc:9090".into(),
                "prometheus.monitoring.svc:9090".into(),
                String::new()
            )
        );
        assert_eq!(
            split_http_url("http://10.0.0.5/prometheus/").unwrap(),
            (
                "10.0.0.5:80".into(),
                "10.0.0.5".into(),
                "/prometheus".into()
            )
        );
        assert!(split_http_url("https://p:9090")
            .unwrap_err()
            .contains("not an http:// URL"));
        assert!(split_http_url("http:///x")
            .unwrap_err()
            .contains("names no host"));
    }
}
