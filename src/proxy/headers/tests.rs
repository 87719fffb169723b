//! Tests of `headers`.

use super::*;

#[test]
fn request_headers_are_rewritten() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "keep-alive, x-secret-hop"),
        ("x-secret-hop", "1"),
        ("te", "trailers"),
        ("x-stackgate-access", "read-write"),
        ("X-Stackgate-Token-Uid", "bltforged"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-request-id", "client"),
        ("authorization", "cs123"),
        ("authtoken", "user"),
        ("api_key", "blt1"),
        ("branch", "main"),
        ("host", "gw"),
    ] {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_static(v));
    }
    let id = HeaderValue::from_static("req-1");
    let identity = Identity { token_uid: "blt00000000000000a1", access: "read" };
    let added = prepare_request_headers(
        &mut h,
        &HeaderValue::from_static("127.0.0.1"),
        false,
        &id,
        Some(identity),
        false,
        None,
    );
    assert!(!h.contains_key("x-secret-hop"), "names Connection lists go at once");
    for (dropped, kept) in [("te", "api_key"), ("authorization", "branch"), ("host", "x-custom")] {
        assert!(!added.forwards(&HeaderName::from_static(dropped)), "{dropped}");
        assert!(added.forwards(&HeaderName::from_static(kept)), "{kept}");
    }
    added.insert_into(&mut h);
    for gone in ["connection", "x-secret-hop", "te", "authorization", "authtoken", "host"] {
        assert!(!h.contains_key(gone), "{gone}");
    }
    assert_eq!(h["x-stackgate-access"], "read");
    assert_eq!(h["x-stackgate-token-uid"], "blt00000000000000a1");
    assert_eq!(h.get_all("x-stackgate-token-uid").iter().count(), 1);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-request-id"], "req-1");
    assert_eq!(h["api_key"], "blt1");
    assert_eq!(h["branch"], "main");
}

/// The direct path's fields are the HTTP/2 path's, in order, without a length.
#[test]
fn written_fields_are_the_forwarded_ones_then_the_gateways() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "client"),
        ("content-length", "999"),
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-request-id", "client"),
        ("authtoken", "user-session"),
        ("authorization", "cs-token"),
        ("api_key", "blt1"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let (peer, id) = (HeaderValue::from_static("10.1.1.1"), HeaderValue::from_static("r1"));
    let identity = Identity { token_uid: "blt9", access: "read" };
    let rewrite = prepare_request_headers(&mut h, &peer, false, &id, Some(identity), false, None);
    let lines: Vec<String> = rewrite.fields(&h).map(|(n, v)| format!("{n}: {}", v.to_str().unwrap())).collect();
    assert_eq!(
        lines,
        [
            "api_key: blt1",
            "x-forwarded-for: 10.1.1.1",
            "x-forwarded-proto: http",
            "x-request-id: r1",
            "x-stackgate-token-uid: blt9",
            "x-stackgate-access: read",
        ]
    );
    // Without a management token (a user session) both credentials pass.
    let none = RequestRewrite::default();
    let user: Vec<&str> = none.fields(&h).map(|(n, _)| n.as_str()).collect();
    assert_eq!(user, ["api_key", "authtoken", "authorization"]);
}

#[test]
fn every_hop_by_hop_and_spoofable_name_is_stripped() {
    let hop = ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization"];
    let more = ["te", "trailer", "transfer-encoding", "upgrade", "x-stackgate-anything", "x-forwarded-host"];
    let spoof = ["forwarded", "x-request-id", "x-http-method-override", "x-original-url", "expect"];
    let underscored = ["x_stackgate_access", "x_forwarded_for", "x_request_id", "transfer_encoding", "content_length"];
    let mut h = HeaderMap::new();
    for name in hop.iter().chain(&more).chain(&spoof).chain(&underscored).chain(&["api_key", "content-type"]) {
        h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
    }
    RequestRewrite::default().insert_into(&mut h);
    let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    left.sort_unstable();
    assert_eq!(left, ["api_key", "content-type"]);
}

#[test]
fn forward_token_keeps_authorization_and_drops_identity() {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static("cs123"));
    h.insert("x-stackgate-access", HeaderValue::from_static("read-write"));
    let id = HeaderValue::from_static("r");
    let identity = Identity { token_uid: "blt1", access: "read" };
    prepare_request_headers(&mut h, &HeaderValue::from_static("::1"), true, &id, Some(identity), true, None)
        .insert_into(&mut h);
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["authorization"], "cs123");
    assert!(!h.contains_key("x-stackgate-access"));
}

#[test]
fn a_length_list_of_one_value_goes_on_as_that_value() {
    let cases: [(&[&str], Option<&str>); 5] =
        [(&["2, 2"], Some("2")), (&["2", "2"], Some("2")), (&[" 2 , 2"], Some("2")), (&["7"], Some("7")), (&[], None)];
    for (sent, kept) in cases {
        let mut headers = HeaderMap::new();
        for value in sent {
            headers.append(header::CONTENT_LENGTH, HeaderValue::from_static(value));
        }
        assert!(prepare_response_headers(http::StatusCode::OK, &mut headers), "{sent:?}");
        let got: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(got, kept.into_iter().collect::<Vec<_>>(), "{sent:?}");
    }
    // A 204 states no length (RFC 9110 section 8.6); a 304 may (the 200's), but the
    // HTTP/1.1 writers leave it out, so it is left out for every client.
    let statuses = [
        (http::StatusCode::NO_CONTENT, None),
        (http::StatusCode::NOT_MODIFIED, None),
        (http::StatusCode::OK, Some("10")),
    ];
    for (status, kept) in statuses {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(prepare_response_headers(status, &mut headers));
        assert_eq!(headers.get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap()), kept, "{status}");
    }
    // What hyper does not check on a HEAD, 204 or 304 answer: refused on every answer,
    // as the direct path refuses it; a length beside Transfer-Encoding is not read.
    // Nor is a length past what any writer frames (hyper's marks for chunked and
    // close-delimited, and beyond), alone or in a list.
    let unusable: [&[&str]; 8] = [
        &["2, 3"],
        &[", 2"],
        &["abc, 5"],
        &["5", "6"],
        &["18446744073709551615"],
        &["18446744073709551614"],
        &["18446744073709551614, 18446744073709551614"],
        &["99999999999999999999"],
    ];
    for sent in unusable {
        for status in [http::StatusCode::OK, http::StatusCode::NO_CONTENT, http::StatusCode::NOT_MODIFIED] {
            let mut headers = HeaderMap::new();
            for value in sent {
                headers.append(header::CONTENT_LENGTH, HeaderValue::from_static(value));
            }
            assert!(!prepare_response_headers(status, &mut headers), "{sent:?} {status}");
            headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            assert!(prepare_response_headers(status, &mut headers), "{sent:?} {status}");
            assert!(!headers.contains_key(header::CONTENT_LENGTH));
        }
    }
}
