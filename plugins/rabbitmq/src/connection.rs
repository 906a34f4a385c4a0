//! Connecting, with the URL's password kept out of every message.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use orbit_plugin_api::{ConfigError, PluginError};

/// The URL with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".to_string(),
    }
}

pub fn validate_url(url: &str) -> Result<(), ConfigError> {
    let u = url::Url::parse(url).map_err(|e| ConfigError::new("url", format!("not a URL: {e}")))?;
    if !matches!(u.scheme(), "amqp" | "amqps") {
        return Err(ConfigError::new(
            "url",
            format!("scheme `{}` is not amqp:// or amqps://", u.scheme()),
        ));
    }
    Ok(())
}

/// Removes the password wherever it might have been echoed into an error message.
pub fn scrub(message: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(p) if !p.is_empty() => message.replace(&p, "***"),
        _ => message.to_string(),
    }
}

/// Classifies a lapin error: refused credentials or vhost are config errors (retrying will not
/// help); everything else (refused connection, lost channel) is retriable.
pub fn classify(e: &lapin::Error, url: &str, what: &str) -> PluginError {
    let text = scrub(&e.to_string(), url);
    let message = format!("{what} {}: {text}", redact(url));
    let lower = text.to_lowercase();
    if lower.contains("access_refused")
        || lower.contains("access refused")
        || lower.contains("not_allowed")
        || lower.contains("authentication")
        || lower.contains("vhost")
    {
        PluginError::config(format!(
            "{message}; check the user, password and vhost in the URL"
        ))
    } else {
        PluginError::retriable(message)
    }
}

pub async fn connect(url: &str, timeout: Duration) -> Result<Connection, PluginError> {
    match tokio::time::timeout(
        timeout,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(classify(&e, url, "cannot connect to")),
        Err(_) => Err(PluginError::retriable(format!(
            "cannot connect to {}: no answer within {}",
            redact(url),
            humantime::format_duration(timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let url = "amqp://guest:s3cret@127.0.0.1:5672/%2f";
        assert_eq!(redact(url), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(scrub("failed for s3cret", url), "failed for ***");
        assert!(validate_url("http://x").is_err());
    }
}
