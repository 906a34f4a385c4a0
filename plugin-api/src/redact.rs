//! Keeping secrets out of logs and errors: a URL as it may be shown, and a message scrubbed of
//! a URL's password. One implementation for every plugin, so that a URL is shown the same way
//! whichever plugin names it.

/// The URL with its password and every query value replaced by `***` (query strings often carry
/// tokens: `?api_key=`, `?sig=`); `<unparsable URL>` when it is not a URL, since the text may
/// then hold a password in a place a parser cannot find.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "<unparsable URL>".to_string();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut q = u.query_pairs_mut();
        q.clear();
        for k in names {
            q.append_pair(&k, "***");
        }
    }
    u.to_string()
}

/// `message` with the URL's password (as written and percent-decoded) replaced by `***`,
/// wherever a library echoed it.
pub fn scrub_password(message: &str, url: &str) -> String {
    let Some(password) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .filter(|p| !p.is_empty())
    else {
        return message.to_string();
    };
    let mut out = message.replace(&password, "***");
    if let Ok(decoded) = percent_encoding::percent_decode_str(&password).decode_utf8() {
        if !decoded.is_empty() && decoded != password {
            out = out.replace(decoded.as_ref(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_query_values_are_hidden() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("https://u:p@x.example/hook?api_key=k1&v=2"),
            "https://u:***@x.example/hook?api_key=***&v=***"
        );
        assert_eq!(redact_url("http://x.example/a"), "http://x.example/a");
        assert_eq!(redact_url("not a url s3cret"), "<unparsable URL>");
    }

    #[test]
    fn a_password_is_scrubbed_as_written_and_decoded() {
        let url = "amqp://guest:p%40ss@127.0.0.1:5672/%2f";
        assert_eq!(
            scrub_password("failed for p%40ss and p@ss", url),
            "failed for *** and ***"
        );
        assert_eq!(
            scrub_password("no secret here", "amqp://h/"),
            "no secret here"
        );
    }
}
