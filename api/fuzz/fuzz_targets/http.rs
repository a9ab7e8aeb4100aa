//! The local API's HTTP parser on arbitrary bytes: never panics; a message it accepts lies
//! within the bytes and the size limits, parses the same alone, and needs more bytes when cut
//! short. And a request written from the input's bytes parses back to its parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::http::{MAX_BODY, MAX_HEAD, ParseError, parse, request};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse(data) {
        let total = head.head_len + head.body_len;
        assert!(head.head_len <= MAX_HEAD + 4 && head.body_len <= MAX_BODY && total <= data.len());
        assert_eq!(parse(&data[..total]), Ok(Some(head.clone())));
        assert!(matches!(parse(&data[..head.head_len - 1]), Ok(None) | Err(ParseError::HeadTooLarge)));
        if head.body_len > 0 {
            assert_eq!(parse(&data[..total - 1]), Ok(None));
        }
    }

    // A request whose method and path are the input's letters and visible characters.
    let (a, b) = data.split_at(data.len().min(8));
    let method: String = a.iter().filter(|c| c.is_ascii_alphabetic()).map(|&c| char::from(c)).collect();
    let method = if method.is_empty() { "GET".to_owned() } else { method };
    let cut = b.len().min(64);
    let path: String = std::iter::once('/').chain(b[..cut].iter().filter(|c| c.is_ascii_graphic()).map(|&c| char::from(c))).collect();
    let body = &b[cut..];
    let msg = request(&method, &path, body);
    let head = parse(&msg).expect("a request we wrote parses").expect("and is complete");
    assert_eq!((head.first.as_str(), head.second.as_str()), (method.as_str(), path.as_str()));
    assert_eq!(&msg[head.head_len..head.head_len + head.body_len], body);
});
