-- A browser-like request for benches/peer-compare.sh (WRK_SCRIPT=benches/peers/browser-get.lua):
-- a path with a query and the nine header fields a browser sends with a page request, about
-- 700 bytes of head where the default request is `GET /` with Host alone.
wrk.method = "GET"
wrk.path = "/catalog/items/1842?view=full&lang=en"
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
wrk.headers["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
wrk.headers["Accept-Language"] = "en-GB,en;q=0.9,de;q=0.7"
wrk.headers["Accept-Encoding"] = "gzip, deflate, br, zstd"
wrk.headers["Referer"] = "https://shop.example.com/catalog?page=3"
wrk.headers["Cookie"] = "session=5f2b9c1e7a4d4e0f9b3c2a1d8e7f6a5b; theme=dark; consent=analytics:0,ads:0"
wrk.headers["Upgrade-Insecure-Requests"] = "1"
wrk.headers["Sec-Fetch-Mode"] = "navigate"
wrk.headers["X-Request-Id"] = "0b4e7c1a-93f2-4d8e-a6b5-2c1f0e9d8a7b"
