//! Backend URLs that never show their credentials.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// A backend URL such as `redis://:secret@127.0.0.1:6379/0`, parsed once into its parts.
///
/// Form: `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?options][#fragment]`.
/// The userinfo ends at the *last* `@` (a password may hold raw `/ ? # @ :`; an `@` in the path or
/// query must then be written `%40`); user and password are percent-decoded; hosts may be a
/// comma-separated list and IPv6 hosts go in brackets. `Debug` and `Display` show the URL with the
/// password, and any `password=` query option, replaced by `***`; only [`expose`](Self::expose)
/// and [`password`](Self::password) return the secret, for handing to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    raw: String,
    scheme_end: usize,
    username: Option<String>,
    password: Option<String>,
    hosts: Vec<Host>,
    /// Byte ranges in `raw`.
    path: (usize, usize),
    query: Option<(usize, usize)>,
    fragment: Option<usize>,
}

/// One host of a [`BackendUrl`], with its port when one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Host {
    /// The host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
}

impl Host {
    /// `host:port` (brackets around an IPv6 address), or the host alone.
    pub fn to_url_form(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }
}

/// An error about `url` that never echoes it: a malformed URL cannot be redacted reliably.
fn malformed(reason: &str) -> Error {
    Error::config(
        "url",
        format!("{reason} (the value is not shown: it may hold a password)"),
    )
}

impl BackendUrl {
    /// Parses a URL into its parts. Errors never show the URL.
    pub fn parse(url: &str) -> Result<Self> {
        let scheme_end = url
            .find("://")
            .filter(|&end| {
                end > 0
                    && url[..end].bytes().enumerate().all(|(i, c)| {
                        c.is_ascii_alphabetic()
                            || (i > 0 && (c.is_ascii_digit() || b"+-.".contains(&c)))
                    })
            })
            .ok_or_else(|| malformed("not a URL of the form scheme://..."))?;
        if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(malformed("a URL holds no spaces or control characters"));
        }
        let start = scheme_end + 3;
        let rest = &url[start..];
        let (username, password, hosts_start) = match rest.rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(percent_decode(password))),
                    None => (userinfo, None),
                };
                let user = Some(percent_decode(user)).filter(|u| !u.is_empty());
                (user, password.filter(|p| !p.is_empty()), start + at + 1)
            }
            None => (None, None, start),
        };
        let after = &url[hosts_start..];
        let hosts_end = hosts_start + after.find(['/', '?', '#']).unwrap_or(after.len());
        let hosts = parse_hosts(&url[hosts_start..hosts_end])?;
        let fragment = url[hosts_end..].find('#').map(|i| hosts_end + i);
        let before_fragment = fragment.unwrap_or(url.len());
        let query_start = url[hosts_end..before_fragment]
            .find('?')
            .map(|i| hosts_end + i);
        let path = (hosts_end, query_start.unwrap_or(before_fragment));
        let query = query_start.map(|q| (q + 1, before_fragment));
        Ok(Self {
            raw: url.to_owned(),
            scheme_end,
            username,
            password,
            hosts,
            path,
            query,
            fragment,
        })
    }

    /// The scheme, lowercase as written (`redis`, `postgres`, `memory`, ...).
    pub fn scheme(&self) -> &str {
        &self.raw[..self.scheme_end]
    }

    /// The user name, decoded; `None` when there is none.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, decoded: a secret. Hand it to a client library; never log it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The hosts, in the order written (none for `memory://`).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The path as written, with its leading `/` (`/0`, `/app`), or empty.
    pub fn path(&self) -> &str {
        &self.raw[self.path.0..self.path.1]
    }

    /// The fragment after `#`, if any.
    pub fn fragment(&self) -> Option<&str> {
        self.fragment.map(|i| &self.raw[i + 1..])
    }

    /// `user:password@` for a URL handed to a client library, each part percent-encoded, or
    /// empty without credentials. Holds the password: never log it.
    pub fn userinfo_for_client(&self) -> String {
        match (&self.username, &self.password) {
            (None, None) => String::new(),
            (user, None) => format!("{}@", percent_encode(user.as_deref().unwrap_or(""))),
            (user, Some(password)) => format!(
                "{}:{}@",
                percent_encode(user.as_deref().unwrap_or("")),
                percent_encode(password)
            ),
        }
    }

    /// The full URL with credentials. Hand it to a client library; never log it.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with credentials replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }

    /// The query options, decoded, to be taken one by one with typed getters; then
    /// [`UrlOptions::finish`] refuses any option nobody took, naming it, so a misspelt option
    /// is an error rather than a silently ignored setting. `field` prefixes error fields
    /// (`"redis"` gives `redis.timeout`).
    pub fn options(&self, field: &str) -> UrlOptions {
        UrlOptions {
            field: field.to_owned(),
            pairs: self
                .query_pairs()
                .map(|(name, value)| (percent_decode(name), percent_decode(value), false))
                .collect(),
        }
    }

    /// The query options as `(name, value)` pairs, undecoded.
    pub fn query_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.query
            .map_or("", |(start, end)| &self.raw[start..end])
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }
}

/// Parses `host[:port][,host[:port]...]`; IPv6 addresses in brackets.
fn parse_hosts(text: &str) -> Result<Vec<Host>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|entry| {
            let (host, port) = if let Some(inner) = entry.strip_prefix('[') {
                let (host, rest) = inner
                    .split_once(']')
                    .ok_or_else(|| malformed("an IPv6 host lacks its closing ]"))?;
                (host, rest.strip_prefix(':'))
            } else {
                match entry.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (entry, None),
                }
            };
            if host.is_empty() {
                return Err(malformed("an empty host"));
            }
            let port = port
                .map(|p| {
                    p.parse::<u16>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| malformed("a port must be a number from 1 to 65535"))
                })
                .transpose()?;
            Ok(Host {
                host: percent_decode(host),
                port,
            })
        })
        .collect()
}

/// Percent-encodes everything but the unreserved characters (`A-Z a-z 0-9 - . _ ~`), for a
/// user name, password or option value put into a URL.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BackendUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of `scheme://user:password@host` and the values of `password=`-like
/// query options with `***`. Works on any string that may be a URL or quote some; text without
/// credentials comes back unchanged.
///
/// The password is hidden whatever characters it holds: the userinfo ends at the *last* `@`
/// before the URL's end (the first whitespace), since a raw password may hold `/ ? # @ :` and a
/// host none of them, and it has a password when a `:` comes before that `@`. A URL with an `@`
/// in its path or query is redacted from its first `:` on: the price of never showing one.
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://") else {
        return redact_query(url);
    };
    let (head, rest) = url.split_at(start + 3);
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (target, tail) = rest.split_at(end);
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    match (target.rfind('@'), target.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            out.push_str(&target[..colon]);
            out.push_str(":***");
            out.push_str(&redact_query(&target[at..]));
        }
        _ => out.push_str(&redact_query(target)),
    }
    // More URLs may follow in a message.
    out.push_str(&redact(tail));
    out
}

/// Replaces the values of `password=`-like query options with `***`.
fn redact_query(text: &str) -> String {
    let Some((main, query)) = text.split_once('?') else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(main);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if is_secret_option(name) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// The secrets a backend knows (passwords from its URL), to scrub from any text it shows:
/// error messages of its client library, for example. `Debug` shows only how many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// Adds a secret as written in a URL, and its percent-decoded form when that differs.
    pub fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let decoded = percent_decode(secret);
        if decoded != secret {
            self.0.push(decoded);
        }
        self.0.push(secret.to_owned());
    }

    /// `text` with URLs redacted and every known secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = redact(text);
        for secret in &self.0 {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }

    /// True when `text` contains a known secret.
    pub fn appear_in(&self, text: &str) -> bool {
        self.0.iter().any(|s| text.contains(s.as_str()))
    }
}

/// A URL's query options, decoded, taken one by one (see [`BackendUrl::options`]). Values are
/// never echoed in errors: an option may hold a secret.
#[derive(Clone)]
pub struct UrlOptions {
    field: String,
    pairs: Vec<(String, String, bool)>,
}

impl fmt::Debug for UrlOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.pairs.iter().map(|(n, _, _)| n.as_str()).collect();
        f.debug_struct("UrlOptions")
            .field("field", &self.field)
            .field("names", &names)
            .finish()
    }
}

impl UrlOptions {
    fn name(&self, option: &str) -> String {
        format!("{}.{option}", self.field)
    }

    /// Takes option `name` as text; the last one wins when it is given twice.
    pub fn string(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        for (option, value, taken) in &mut self.pairs {
            if option == name {
                *taken = true;
                found = Some(value.clone());
            }
        }
        found
    }

    /// Takes option `name` as a duration (`250ms`, `2s`, `1m 30s`) within `range`; the error
    /// names the field and the range.
    pub fn duration(
        &mut self,
        name: &str,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Option<Duration>> {
        let Some(value) = self.string(name) else {
            return Ok(None);
        };
        let field = self.name(name);
        let d = humantime::parse_duration(&value)
            .map_err(|_| Error::config(&field, "not a duration such as 250ms, 2s or 1h"))?;
        if d.is_zero() && !range.contains(&d) {
            return Err(Error::config(&field, "must not be zero"));
        }
        if !range.contains(&d) {
            return Err(Error::config(
                &field,
                format!(
                    "must be from {} to {}",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ),
            ));
        }
        Ok(Some(d))
    }

    /// Takes option `name` as a whole number within `range`.
    pub fn number(
        &mut self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>> {
        let Some(value) = self.string(name) else {
            return Ok(None);
        };
        let field = self.name(name);
        let n: u64 = value
            .parse()
            .map_err(|_| Error::config(&field, "not a whole number"))?;
        if !range.contains(&n) {
            return Err(Error::config(
                &field,
                format!("must be from {} to {}", range.start(), range.end()),
            ));
        }
        Ok(Some(n))
    }

    /// Takes option `name` as `true` or `false`.
    pub fn flag(&mut self, name: &str) -> Result<Option<bool>> {
        match self.string(name).as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(Error::config(self.name(name), "must be true or false")),
        }
    }

    /// Fails, naming them, when options were given that nobody took.
    pub fn finish(self) -> Result<()> {
        let unknown: Vec<&str> = self
            .pairs
            .iter()
            .filter(|(_, _, taken)| !taken)
            .map(|(name, _, _)| name.as_str())
            .collect();
        match unknown.first() {
            None => Ok(()),
            Some(first) => Err(Error::config(
                self.name(first),
                format!("unknown URL option(s): {}", unknown.join(", ")),
            )),
        }
    }
}

/// Decodes `%XX` escapes; anything else passes through.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "pass",
        "secret",
        "token",
        "sslpassword",
    ]
    .iter()
    .any(|s| name == *s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_parts_are_parsed_once_and_decoded() {
        let url = BackendUrl::parse(
            "redis://us%40er:S3cr3t/pa?ss#w@rd@h1:7000,[::1]:7001,h3/2?a=1#insecure",
        )
        .unwrap();
        assert_eq!(url.username(), Some("us@er"));
        assert_eq!(url.password(), Some("S3cr3t/pa?ss#w@rd"));
        let hosts: Vec<_> = url.hosts().iter().map(Host::to_url_form).collect();
        assert_eq!(hosts, ["h1:7000", "[::1]:7001", "h3"]);
        assert_eq!(url.path(), "/2");
        assert_eq!(url.query_pairs().collect::<Vec<_>>(), vec![("a", "1")]);
        assert_eq!(url.fragment(), Some("insecure"));
        assert_eq!(
            url.userinfo_for_client(),
            "us%40er:S3cr3t%2Fpa%3Fss%23w%40rd@"
        );
        for shown in [url.to_string(), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("S3cr3t"), "{shown}");
        }

        let plain = BackendUrl::parse("postgres://app@db/app").unwrap();
        assert_eq!((plain.username(), plain.password()), (Some("app"), None));
        assert_eq!(plain.hosts()[0].port, None);
        let memory = BackendUrl::parse("memory://?name=m").unwrap();
        assert!(memory.hosts().is_empty());
        assert_eq!(memory.path(), "");

        for bad in [
            "redis://:hunter2@h:99999",
            "redis://:hunter2@h:port",
            "redis://:hunter2@[::1",
            "redis://:hunter2@h1,,h2",
            "redis://:hunter2@h /0",
        ] {
            let err = BackendUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn options_are_decoded_typed_bounded_and_unknown_ones_refused() {
        let url = BackendUrl::parse(
            "x://h/?timeout=250ms&size=10&on=true&name=a%20b&password=s3cret&colour=red",
        )
        .unwrap();
        let mut options = url.options("x");
        let second = Duration::from_secs(1);
        assert_eq!(
            options
                .duration("timeout", Duration::ZERO..=second)
                .unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(options.number("size", 1..=100).unwrap(), Some(10));
        assert_eq!(options.flag("on").unwrap(), Some(true));
        assert_eq!(options.string("name").as_deref(), Some("a b"));
        assert_eq!(options.string("missing"), None);
        let _ = options.string("password");
        let err = options.clone().finish().unwrap_err().to_string();
        assert!(err.contains("colour") && !err.contains("red"), "{err}");
        let _ = options.string("colour");
        options.finish().unwrap();

        let url = BackendUrl::parse("x://h/?timeout=1h&size=1000&on=yes&password=s3cret").unwrap();
        let mut options = url.options("x");
        let err = options
            .duration("timeout", Duration::ZERO..=second)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.timeout") && err.contains("1s"), "{err}");
        assert!(options.number("size", 1..=100).is_err());
        assert!(options.flag("on").is_err());
        assert!(!format!("{options:?}").contains("s3cret"));
    }

    use super::*;

    #[test]
    fn passwords_are_redacted_in_every_rendering() {
        let url =
            BackendUrl::parse("redis://user:s3cr3t@127.0.0.1:6379/0?password=also&db=1").unwrap();
        for shown in [format!("{url}"), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(!shown.contains("also"), "{shown}");
            assert!(shown.contains("127.0.0.1:6379"), "{shown}");
        }
        assert_eq!(
            url.redacted(),
            "redis://user:***@127.0.0.1:6379/0?password=***&db=1"
        );
        assert_eq!(
            url.expose(),
            "redis://user:s3cr3t@127.0.0.1:6379/0?password=also&db=1"
        );
        assert_eq!(url.scheme(), "redis");
    }

    #[test]
    fn an_at_sign_in_the_password_is_still_redacted() {
        assert_eq!(
            redact("postgres://app:p@ss@db/app"),
            "postgres://app:***@db/app"
        );
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact("memory://"), "memory://");
    }

    #[test]
    fn a_password_with_url_delimiters_is_redacted_whole() {
        assert_eq!(redact("redis://:pa/ss@host"), "redis://:***@host");
        assert_eq!(
            redact("redis://:S3cr3t/pa?ss#w@rd@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact("failed: postgres://u:a b@h/db (x) and redis://:q@r"),
            "failed: postgres://u:a b@h/db (x) and redis://:***@r",
            "a URL in a message ends at whitespace"
        );
        assert_eq!(redact("redis://host:6379/0"), "redis://host:6379/0");
    }

    proptest::proptest! {
        #[test]
        fn redact_never_shows_a_password(
            user in "[a-z]{0,6}",
            password in r"[a-zA-Z0-9/?#@:%&=.+-]{4,24}",
            host in "[a-z]{1,10}(:[0-9]{1,5})?",
            path in r"(/[a-z0-9]{0,6})?(\?[a-z_]{1,8}=[a-z0-9]{0,6})?",
            scheme in "(redis|rediss|postgres|redis\\+cluster)",
        ) {
            let url = format!("{scheme}://{user}:{password}@{host}{path}");
            let shown = redact(&url);
            let outside = format!("{scheme}://{user}:@{host}{path}");
            proptest::prop_assume!(!outside.contains(&password));
            proptest::prop_assert!(!shown.contains(&password), "{} shows the password", shown);
            proptest::prop_assert!(shown.contains(":***@"), "{}", shown);
        }
    }

    #[test]
    fn schemes_and_query_pairs() {
        assert_eq!(
            BackendUrl::parse("redis+cluster://a,b").unwrap().scheme(),
            "redis+cluster"
        );
        assert!(BackendUrl::parse("no scheme").is_err());
        assert!(BackendUrl::parse("://x").is_err());
        assert!(BackendUrl::parse("1abc://x").is_err());
        let url = BackendUrl::parse("memory://?max_bytes=10&x").unwrap();
        assert_eq!(
            url.query_pairs().collect::<Vec<_>>(),
            vec![("max_bytes", "10"), ("x", "")]
        );
    }

    #[test]
    fn secrets_are_scrubbed_raw_and_decoded_and_never_debug_printed() {
        let mut secrets = Secrets::default();
        secrets.add("s%40cret");
        assert_eq!(secrets.scrub("bad s@cret, s%40cret"), "bad ***, ***");
        assert!(secrets.appear_in("x s@cret"));
        assert_eq!(format!("{secrets:?}"), "Secrets(2 redacted)");
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn a_bad_url_error_does_not_show_the_password() {
        let err = BackendUrl::parse("redis//user:hunter2@host")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
