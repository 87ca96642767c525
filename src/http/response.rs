//! The response writer: status line with its RFC 9110 §15 reason phrase, framing headers, the
//! caller's extra headers, and the body; JSON error bodies; the `Date` format.
//!
//! Owns: the exact bytes of every HTTP response head the listener sends, and the framing
//! headers in it (`Content-Length`, `Connection`), which callers cannot override.
//!
//! Must not: read the clock (`http_date` takes the seconds), or write chunked responses (every
//! response knows its length up front).
//!
//! Invariants:
//! - A response has `Content-Length` equal to the body it describes (the body a GET would get,
//!   for a HEAD), except 204 and 304, which have neither (RFC 9110 §8.6, §15.3.5, §15.4.5).
//! - `Connection: close` is written exactly when the caller will close after the response;
//!   otherwise `Connection: keep-alive`, which an HTTP/1.0 client needs to hear (RFC 9112
//!   §9.3) and an HTTP/1.1 client ignores.
//! - No header line can be split: a name that is not a token or a value with CR, LF or NUL
//!   (RFC 9110 §5.5: "invalid and dangerous") is a caller bug and panics. Values copied from a
//!   parsed request never contain them (httparse refuses them).

/// The interim response to `Expect: 100-continue` (see [`super::continue_expected`]).
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// `Cache-Control: no-store` (RFC 9111 §5.2.2.5), for API, health and metrics responses that
/// must not be served from a cache. Error responses from [`error_json`] carry it already.
pub const NO_STORE: (&str, &str) = ("Cache-Control", "no-store");

/// The reason phrase of a status code (RFC 9110 §15; RFC 6585 for 428, 429, 431 and 511); ""
/// for a code without one, which RFC 9112 §4 allows ("a client SHOULD ignore the
/// reason-phrase content").
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// A complete response: head and `body`. `content_type` "" writes no `Content-Type` (for an
/// empty body). `extra_headers` follow the framing headers in order, e.g. [`NO_STORE`],
/// `("Allow", "GET, HEAD")` for a 405 (RFC 9110 §15.5.6), `("WWW-Authenticate", "Bearer")` for
/// a 401 (§15.5.2), or `("Date", &http_date(now_s))`.
///
/// Panics on a status outside 200..=599 (the interim one is [`CONTINUE_100`]), a body with 204
/// or 304, a header line that could be split (see the module invariants), or an extra header
/// that would override the framing (`Content-Length`, `Transfer-Encoding`, `Connection`).
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_capacity(content_type, extra_headers) + body.len());
    write_head(
        &mut out,
        status,
        content_type,
        body.len(),
        keep_alive,
        extra_headers,
    );
    out.extend_from_slice(body);
    out
}

/// The head alone of a response whose body is `body_len` bytes: the answer to a HEAD request
/// (RFC 9110 §9.3.2: the same fields as for GET, no content), or the head in front of a body
/// the caller sends from its own buffer (a metrics snapshot, a static page) without a copy.
/// Panics as [`response`] does.
pub fn response_head(
    status: u16,
    content_type: &str,
    body_len: usize,
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_capacity(content_type, extra_headers));
    write_head(
        &mut out,
        status,
        content_type,
        body_len,
        keep_alive,
        extra_headers,
    );
    out
}

/// The JSON error body every API error uses: `{"error":{"code":CODE,"message":MESSAGE}}`, both
/// strings JSON-escaped.
pub fn error_body(code: &str, message: &str) -> String {
    let code = serde_json::Value::from(code).to_string();
    let message = serde_json::Value::from(message).to_string();
    format!("{{\"error\":{{\"code\":{code},\"message\":{message}}}}}")
}

/// A complete error response: [`error_body`] as `application/json`, with [`NO_STORE`] and then
/// `extra_headers`. `keep_alive` may be true for an error the endpoint decided (404, 401, 405);
/// after an [`HttpError`](super::HttpError) it is false, as in
/// [`HttpError::response`](super::HttpError::response). Panics as [`response`] does.
pub fn error_json(
    status: u16,
    code: &str,
    message: &str,
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let body = error_body(code, message);
    let mut headers = Vec::with_capacity(1 + extra_headers.len());
    headers.push(NO_STORE);
    headers.extend_from_slice(extra_headers);
    response(
        status,
        "application/json",
        body.as_bytes(),
        keep_alive,
        &headers,
    )
}

/// `unix_seconds` as an IMF-fixdate, the `Date` format (RFC 9110 §5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`. RFC 9110 §6.6.1 has an origin server with a clock send
/// `Date` in its 2xx, 3xx and 4xx responses; the caller formats it once per second and passes
/// it in `extra_headers`.
pub fn http_date(unix_seconds: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_seconds / 86_400;
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[(days % 7) as usize];
    let month = MONTHS[month - 1];
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    );
    format!("{weekday}, {day:02} {month} {year:04} {hour:02}:{minute:02}:{second:02} GMT")
}

/// The proleptic Gregorian date (year, month 1..=12, day 1..=31) of a day counted from
/// 1970-01-01, by the well-known days-to-civil algorithm: eras of 400 years (146 097 days),
/// years starting in March so that the leap day is the last of the year.
fn civil_from_days(days: u64) -> (u64, usize, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month as usize, day)
}

/// Room for a head with these variable parts (a hint; the vector grows if it must).
fn head_capacity(content_type: &str, extra_headers: &[(&str, &str)]) -> usize {
    let extra: usize = extra_headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    128 + content_type.len() + extra
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body_len: usize,
    keep_alive: bool,
    extra_headers: &[(&str, &str)],
) {
    assert!(
        (200..=599).contains(&status),
        "status {status}: final statuses only"
    );
    // RFC 9110 §8.6: no Content-Length in a 204; §15.4.5: a 304 "cannot contain content" and
    // may only repeat the length a 200 would have had, which this writer does not know.
    let no_content = status == 204 || status == 304;
    assert!(!no_content || body_len == 0, "{status} has no content");
    assert!(
        value_is_safe(content_type),
        "Content-Type would split the head"
    );

    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, usize::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !content_type.is_empty() {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !no_content {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, body_len);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n"
    } else {
        b"Connection: close\r\n"
    });
    for &(name, value) in extra_headers {
        assert!(is_token(name), "header name {name:?} is not a token");
        assert!(
            !["content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|framing| name.eq_ignore_ascii_case(framing)),
            "{name} is written by the response writer"
        );
        assert!(
            value_is_safe(value),
            "the value of {name} would split the head"
        );
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A field name: `1*tchar` (RFC 9110 §5.6.2).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a field value can be written without splitting the head (RFC 9110 §5.5).
fn value_is_safe(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Writes `n` in decimal without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    // usize::MAX has 20 digits on 64-bit targets.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpError;

    /// Splits a response with httparse (a second opinion on its syntax): status, headers in
    /// order, body.
    fn read(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(len) = parsed.parse(bytes).unwrap() else {
            panic!("incomplete response {bytes:?}");
        };
        let headers = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (parsed.code.unwrap(), headers, bytes[len..].to_vec())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn exact_bytes() {
        let bytes = response(
            200,
            "text/plain; version=0.0.4",
            b"up 1\n",
            true,
            &[NO_STORE],
        );
        assert_eq!(
            bytes,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 5\r\n\
              Connection: keep-alive\r\nCache-Control: no-store\r\n\r\nup 1\n"
        );
        let bytes = response(404, "", b"", false, &[]);
        assert_eq!(
            bytes,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            response(299, "", b"", true, &[]),
            b"HTTP/1.1 299 \r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn framing_and_keep_alive() {
        let body = vec![b'x'; 123_456];
        for keep_alive in [true, false] {
            let bytes = response(201, "application/octet-stream", &body, keep_alive, &[]);
            let (status, headers, got) = read(&bytes);
            assert_eq!(status, 201);
            assert_eq!(header(&headers, "content-length"), Some("123456"));
            let connection = if keep_alive { "keep-alive" } else { "close" };
            assert_eq!(header(&headers, "connection"), Some(connection));
            assert_eq!(got, body);
        }
        // HEAD: the GET's length, no body.
        let head = response_head(200, "text/html", 5000, true, &[]);
        let (_, headers, body) = read(&head);
        assert_eq!(header(&headers, "content-length"), Some("5000"));
        assert!(body.is_empty());
        assert_eq!(
            response(200, "text/html", b"abc", true, &[]),
            [
                response_head(200, "text/html", 3, true, &[]),
                b"abc".to_vec()
            ]
            .concat()
        );
        // 204 and 304: no Content-Length.
        for status in [204, 304] {
            let (got, headers, body) = read(&response(status, "", b"", true, &[]));
            assert_eq!(got, status);
            assert_eq!(header(&headers, "content-length"), None);
            assert!(body.is_empty());
        }
    }

    #[test]
    fn extra_headers_in_order() {
        let date = http_date(784_111_777);
        let bytes = response(
            405,
            "",
            b"",
            true,
            &[("Allow", "GET, HEAD"), ("Date", &date), ("X-Empty", "")],
        );
        let (status, headers, _) = read(&bytes);
        assert_eq!(status, 405);
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["Content-Length", "Connection", "Allow", "Date", "X-Empty"]
        );
        assert_eq!(
            header(&headers, "date"),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
    }

    #[test]
    #[should_panic(expected = "split the head")]
    fn a_value_with_crlf_panics() {
        response(200, "", b"", true, &[("X-A", "b\r\nSet-Cookie: evil")]);
    }

    #[test]
    #[should_panic(expected = "not a token")]
    fn a_name_with_a_colon_panics() {
        response(200, "", b"", true, &[("X-A: b", "c")]);
    }

    #[test]
    #[should_panic(expected = "split the head")]
    fn a_content_type_with_lf_panics() {
        response(200, "text/plain\nX: y", b"", true, &[]);
    }

    #[test]
    #[should_panic(expected = "written by the response writer")]
    fn a_framing_header_panics() {
        response(200, "", b"ab", true, &[("content-length", "1")]);
    }

    #[test]
    #[should_panic(expected = "has no content")]
    fn a_204_with_a_body_panics() {
        response(204, "text/plain", b"x", true, &[]);
    }

    #[test]
    #[should_panic(expected = "final statuses only")]
    fn an_interim_status_panics() {
        response(100, "", b"", true, &[]);
    }

    #[test]
    fn continue_100_is_an_interim_head() {
        let mut slots = [httparse::EMPTY_HEADER; 1];
        let mut parsed = httparse::Response::new(&mut slots);
        assert_eq!(
            parsed.parse(CONTINUE_100),
            Ok(httparse::Status::Complete(CONTINUE_100.len()))
        );
        assert_eq!(parsed.code, Some(100));
    }

    #[test]
    fn reason_phrases() {
        let cases = [
            (200, "OK"),
            (204, "No Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (415, "Unsupported Media Type"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
            (505, "HTTP Version Not Supported"),
            (418, ""),
        ];
        for (status, phrase) in cases {
            assert_eq!(reason(status), phrase, "{status}");
            let line = format!("HTTP/1.1 {status} {phrase}\r\n");
            assert!(response(status, "", b"", true, &[]).starts_with(line.as_bytes()));
        }
        // Every status the parser refuses with has its phrase.
        for error in HttpError::ALL {
            assert!(!reason(error.status()).is_empty(), "{error:?}");
        }
    }

    #[test]
    fn error_bodies() {
        let body = error_body("not_found", "no \"endpoint\"\nhere\\");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
        assert_eq!(json["error"]["message"], "no \"endpoint\"\nhere\\");
        assert_eq!(json.as_object().unwrap().len(), 1);
        assert_eq!(
            error_body("bad_request", "x"),
            r#"{"error":{"code":"bad_request","message":"x"}}"#
        );

        let bytes = error_json(
            401,
            "unauthorized",
            "bearer token required",
            true,
            &[("WWW-Authenticate", "Bearer")],
        );
        let (status, headers, body) = read(&bytes);
        assert_eq!(status, 401);
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(header(&headers, "cache-control"), Some("no-store"));
        assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
        assert_eq!(header(&headers, "connection"), Some("keep-alive"));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "unauthorized");
    }

    #[test]
    fn every_parser_error_has_a_closing_json_response() {
        for error in HttpError::ALL {
            let bytes = error.response();
            assert!(bytes.len() <= HttpError::RESPONSE_BYTES_MAX, "{error:?}");
            let (status, headers, body) = read(&bytes);
            assert_eq!(status, error.status());
            assert_eq!(header(&headers, "connection"), Some("close"));
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["code"], error.code());
            assert_eq!(json["error"]["message"], error.message());
            assert!(
                error.message().len() <= 64,
                "{error:?}: keep messages short"
            );
        }
        let codes: Vec<(u16, &str)> = [400, 411, 413, 431, 505]
            .iter()
            .map(|&status| {
                let error = HttpError::ALL
                    .iter()
                    .find(|e| e.status() == status)
                    .unwrap();
                (status, error.code())
            })
            .collect();
        assert_eq!(
            codes,
            [
                (400, "bad_request"),
                (411, "length_required"),
                (413, "payload_too_large"),
                (431, "headers_too_large"),
                (505, "http_version_not_supported"),
            ]
        );
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(4_102_444_800), "Fri, 01 Jan 2100 00:00:00 GMT");
        assert_eq!(http_date(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(http_date(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
    }

    /// `civil_from_days` against a calendar counted day by day, for 300 years.
    #[test]
    fn calendar_by_counting() {
        let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let (mut year, mut month, mut day) = (1970u64, 1usize, 1u64);
        for days in 0..300 * 366 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let month_len = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 99, 100, 123_456, usize::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
