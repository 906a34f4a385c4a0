//! Connecting, with the URL's password kept out of every message.

use std::path::PathBuf;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use orbit_plugin_api::redact::{redact_url, scrub_password};
use orbit_plugin_api::{ConfigError, PluginError};
use serde::Deserialize;

/// `tls:` for `amqps://` URLs: a private CA to trust (in addition to the system's roots) and
/// an optional client certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its PKCS#8 PEM key, for brokers that verify peers.
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

/// Where and how to connect, resolved once at open: the parsed URI with the credentials from
/// the URL or the `username`/`password` keys, the TLS material read from its files, and the
/// URL as it may be shown (password replaced by `***`).
pub struct Endpoint {
    uri: AMQPUri,
    tls: OwnedTLSConfig,
    shown: String,
    /// Strings removed from every error message (the password, raw and percent-encoded).
    secrets: Vec<String>,
}

/// Checks the connection keys shared by the source and the sink (nothing is read or
/// connected).
pub fn validate_connection(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
    tls: Option<&Tls>,
) -> Result<(), ConfigError> {
    validate_url(url)?;
    let u = url::Url::parse(url).expect("validated");
    if username.is_some() && !u.username().is_empty() {
        return Err(ConfigError::new(
            "username",
            "the URL has a user name too; give it in one place",
        ));
    }
    if password.is_some() && u.password().is_some() {
        return Err(ConfigError::new(
            "password",
            "the URL has a password too; give it in one place (the key keeps it out of the URL)",
        ));
    }
    if let Some(tls) = tls {
        if u.scheme() != "amqps" {
            return Err(ConfigError::new(
                "tls",
                "is set but the URL is amqp://; use amqps:// to connect with TLS",
            ));
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError::new(
                "tls",
                "cert_file and key_file go together (a client certificate needs its key)",
            ));
        }
    }
    Ok(())
}

fn read_tls_file(key: &str, path: &PathBuf, what: &str) -> Result<Vec<u8>, PluginError> {
    let bytes = std::fs::read(path).map_err(|e| {
        PluginError::config(format!(
            "tls.{key}: cannot read {}: {e}; give the path of a PEM file",
            path.display()
        ))
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(PluginError::config(format!(
            "tls.{key}: {} holds no PEM {what} (no `-----BEGIN` line)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl Endpoint {
    pub fn new(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
        tls: Option<&Tls>,
    ) -> Result<Self, PluginError> {
        let mut uri: AMQPUri = url.parse().map_err(|e: String| {
            PluginError::config(format!(
                "url: {}: {}",
                redact_url(url),
                scrub_password(&e, url)
            ))
        })?;
        if let Some(user) = username {
            uri.authority.userinfo.username = user.to_string();
        }
        let mut secrets = Vec::new();
        if let Some(p) = url::Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
        {
            secrets.push(p);
        }
        if let Some(p) = password {
            uri.authority.userinfo.password = p.to_string();
        }
        if !uri.authority.userinfo.password.is_empty() {
            secrets.push(uri.authority.userinfo.password.clone());
        }
        secrets.retain(|s| !s.is_empty());
        let mut config = OwnedTLSConfig::default();
        if let Some(tls) = tls {
            if let Some(ca) = &tls.ca_file {
                let pem = read_tls_file("ca_file", ca, "certificate")?;
                config.cert_chain = Some(String::from_utf8(pem).map_err(|_| {
                    PluginError::config(format!("tls.ca_file: {} is not text", ca.display()))
                })?);
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                config.identity = Some(OwnedIdentity::PKCS8 {
                    pem: read_tls_file("cert_file", cert, "certificate")?,
                    key: read_tls_file("key_file", key, "private key")?,
                });
            }
        }
        Ok(Endpoint {
            uri,
            tls: config,
            shown: redact_url(url),
            secrets,
        })
    }

    /// The URL for logs and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn scrub(&self, message: &str) -> String {
        self.secrets
            .iter()
            .fold(message.to_string(), |m, s| m.replace(s.as_str(), "***"))
    }

    /// Classifies a lapin error: refused credentials or vhost are config errors (retrying will
    /// not help); everything else (refused connection, lost channel) is retriable.
    pub fn classify(&self, e: &lapin::Error, what: &str) -> PluginError {
        let text = self.scrub(&e.to_string());
        let message = format!("{what} {}: {text}", self.shown);
        let lower = text.to_lowercase();
        if lower.contains("access_refused")
            || lower.contains("access refused")
            || lower.contains("not_allowed")
            || lower.contains("authentication")
            || lower.contains("vhost")
        {
            PluginError::config(format!(
                "{message}; check the user, password and vhost (the URL or `username`/`password`)"
            ))
        } else if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
        {
            PluginError::config(format!(
                "{message}; check `tls.ca_file` (the CA that signed the broker's certificate) and that the URL's host matches the certificate"
            ))
        } else {
            PluginError::retriable(message)
        }
    }

    pub async fn connect(&self, timeout: Duration) -> Result<Connection, PluginError> {
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| PluginError::fatal(format!("no runtime for lapin: {e}")))?;
        match tokio::time::timeout(
            timeout,
            Connection::connect_uri_with_config(
                self.uri.clone(),
                ConnectionProperties::default(),
                self.tls.clone(),
                runtime,
            ),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.classify(&e, "cannot connect to")),
            Err(_) => Err(PluginError::retriable(format!(
                "cannot connect to {}: no answer within {}",
                self.shown,
                humantime::format_duration(timeout)
            ))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_amqp_urls_are_valid() {
        assert!(validate_url("http://x").is_err());
        assert!(validate_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
    }
}
