//! Bootstrap tokens: what lets a new board get a node certificate
//! (`tether-hub token create|list|delete`, redeemed by the join protocol).
//!
//! A token is `ID.SECRET` as kubeadm's: a 6-character id, public (it names
//! the token in listings and errors), and a 16-character secret, both of
//! `[a-z0-9]` from the system's random source. The hub keeps only the
//! SHA-256 of the secret and compares digests in constant time. A token
//! expires (24 h by default, at most 365 days: none lives forever), may be
//! bound to one node name, may be single-use (then it records when and by
//! which node it was used, and is kept until it expires so that a second
//! use says so), and has a usage: `join` (a certificate for a node name
//! that holds no live certificate) or `rejoin` (also replacing a live
//! certificate: a new board for an existing name).
//!
//! The tokens live in `<state dir>/tokens` (see [`super::store`] for the
//! locking and atomic rewrite), one line per token:
//!
//! ```text
//! <id> <sha256(secret) hex> <created> <expires> <node|-> <join|join,rejoin> <single|multi> <used-at|-> <used-by|-> <description as a JSON string|->
//! ```
//!
//! with times in seconds since the Unix epoch. Expired tokens are dropped
//! whenever the file is rewritten by [`TokenStore::create`] or
//! [`TokenStore::redeem`].

pub use super::store::StoreError;
use super::store::{from_secs, hex, rfc3339, to_secs, unhex, StateFile};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use tether_link::topic::NodeName;

/// The file name in the state directory.
pub const TOKENS_FILE: &str = "tokens";
/// Characters in a token id.
pub const ID_LEN: usize = 6;
/// Characters in a token secret.
pub const SECRET_LEN: usize = 16;
/// A token's time to live without `--ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest time to live: a bootstrap token is a secret on a piece of
/// paper or in a provisioning script, and should not outlive its purpose.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const HEADER: &str =
    "# tether-hub bootstrap tokens: written by tether-hub, change them with `tether-hub token`.\n\
# Secrets are stored as SHA-256 only. Times are seconds since 1970-01-01 UTC.\n\
# id sha256(secret) created expires node usage single-use used-at used-by description\n";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A certificate for a node name that holds no live certificate.
    Join,
    /// Also replacing a node's live certificate (a new board for an
    /// existing name); includes `Join`.
    Rejoin,
}

impl Usage {
    /// As written in the file, in listings and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Join => "join",
            Usage::Rejoin => "join,rejoin",
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Usage {
    type Err = String;

    /// `join`, `rejoin` or both, comma-separated (`rejoin` includes `join`).
    fn from_str(s: &str) -> Result<Usage, String> {
        let mut usage = None;
        for part in s.split(',') {
            usage = Some(match (part.trim(), usage) {
                ("join", None | Some(Usage::Join)) => Usage::Join,
                ("join" | "rejoin", Some(Usage::Rejoin)) | ("rejoin", _) => Usage::Rejoin,
                (other, _) => {
                    return Err(format!(
                        "unknown token usage {other:?}: use join (a node name with no live certificate) and/or rejoin (also replace a node's live certificate), e.g. join,rejoin"
                    ))
                }
            });
        }
        usage.ok_or_else(|| "empty token usage: use join and/or rejoin".to_string())
    }
}

/// What `token create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOptions {
    /// Time to live, more than zero and at most [`MAX_TTL`].
    pub ttl: Duration,
    /// Only this node name may join with the token.
    pub node: Option<NodeName>,
    /// What the token allows.
    pub usage: Usage,
    /// Good for one certificate only.
    pub single_use: bool,
    /// A note for `token list` (who or what the token is for).
    pub description: Option<String>,
}

impl Default for TokenOptions {
    fn default() -> TokenOptions {
        TokenOptions {
            ttl: DEFAULT_TTL,
            node: None,
            usage: Usage::Join,
            single_use: false,
            description: None,
        }
    }
}

/// A token as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The public id.
    pub id: String,
    /// When it was made (whole seconds).
    pub created: SystemTime,
    /// When it stops working (whole seconds).
    pub expires: SystemTime,
    /// The only node name it may be used for.
    pub node: Option<NodeName>,
    /// What it allows.
    pub usage: Usage,
    /// Good for one certificate only.
    pub single_use: bool,
    /// For a used single-use token: when, and by which node.
    pub used: Option<(SystemTime, NodeName)>,
    /// The operator's note.
    pub description: Option<String>,
}

/// A token just made: the only time its secret exists outside the board
/// that will use it. `Display` gives `ID.SECRET`; `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The public id.
    pub id: String,
    secret: String,
    /// When it stops working.
    pub expires: SystemTime,
    /// Everything stored about it.
    pub info: TokenInfo,
}

impl NewToken {
    /// The secret part (16 characters).
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Display for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// A token accepted by [`TokenStore::redeem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    /// The token's id (for the node's record: "joined with token ...").
    pub id: String,
    /// The node the certificate is for.
    pub node: NodeName,
    /// What the token allows.
    pub usage: Usage,
    /// Whether the certificate replaces a live one (used the `rejoin` usage).
    pub rejoin: bool,
    /// Whether the token was single-use (it is now used up).
    pub single_use: bool,
}

/// Why a token does not get a certificate. The `Display` text is for the
/// person running `tether-edge join` (the hub sends it to the edge): what
/// is wrong and what to do. It never contains the secret.
#[derive(Debug)]
pub enum TokenError {
    /// Not of the form `ID.SECRET`.
    Malformed,
    /// No token with this id.
    Unknown {
        /// The id given.
        id: String,
    },
    /// The id exists, the secret does not match.
    WrongSecret {
        /// The id given.
        id: String,
    },
    /// The token expired.
    Expired {
        /// The token's id.
        id: String,
        /// When.
        at: SystemTime,
    },
    /// A single-use token was used already.
    AlreadyUsed {
        /// The token's id.
        id: String,
        /// When it was used.
        at: SystemTime,
        /// By which node.
        by: NodeName,
    },
    /// The token is bound to another node name.
    WrongNode {
        /// The token's id.
        id: String,
        /// The name it is bound to.
        bound: NodeName,
        /// The name asked for.
        asked: NodeName,
    },
    /// The node holds a live certificate and the token's usage is only `join`.
    NeedsRejoin {
        /// The token's id.
        id: String,
        /// The node.
        node: NodeName,
    },
    /// The token file cannot be read or written. Its `Display` says only
    /// that (it goes to the edge); log the [`StoreError`] inside.
    Store(StoreError),
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> TokenError {
        TokenError::Store(e)
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CREATE: &str = "create a new one on the hub with `tether-hub token create`";
        match self {
            TokenError::Malformed => write!(
                f,
                "the token is not of the form ID.SECRET ({ID_LEN} and {SECRET_LEN} characters a-z and 0-9, as `tether-hub token create` prints it); check that it was copied whole"
            ),
            TokenError::Unknown { id } => write!(
                f,
                "the hub has no token {id} (it was deleted, or it expired and was removed); {CREATE}"
            ),
            TokenError::WrongSecret { id } => write!(
                f,
                "token {id}: the secret is wrong; check the --token value against what `tether-hub token create` printed"
            ),
            TokenError::Expired { id, at } => {
                write!(f, "token {id} expired at {}; {CREATE}", rfc3339(*at))
            }
            TokenError::AlreadyUsed { id, at, by } => write!(
                f,
                "token {id} is single-use and was already used at {} by node {by}; {CREATE}",
                rfc3339(*at)
            ),
            TokenError::WrongNode { id, bound, asked } => write!(
                f,
                "token {id} is only for node {bound}, not {asked}; join with --node-name {bound}, or create a token for {asked} with `tether-hub token create --node {asked}`"
            ),
            TokenError::NeedsRejoin { id, node } => write!(
                f,
                "node {node} already holds a live certificate and token {id} only joins new nodes; for a new board under that name create a token with `tether-hub token create --node {node} --usages rejoin`, or revoke the old certificate with `tether-hub node revoke {node}`"
            ),
            // The detail (paths, system errors) is for the hub's log, via
            // `source()`, not for whoever is joining.
            TokenError::Store(_) => f.write_str(
                "the hub cannot check tokens now (its token store failed); try again later, or tell the hub's operator",
            ),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// One stored token.
#[derive(Debug, Clone)]
struct Record {
    info: TokenInfo,
    hash: [u8; 32],
}

/// The bootstrap tokens of one hub, in `<state dir>/tokens`. Cheap to
/// open; every call reads the file anew, so the `tether-hub token`
/// commands and a running hub always agree. [`TokenStore::redeem`] parses
/// only the token's own line: about 60 µs in a debug build with 300
/// tokens in the file; a single-use token adds the locked rewrite, 1 to
/// 5 ms here, nearly all of it fsync. The calls block: an async caller
/// runs them off its executor thread (e.g. `smol::unblock`).
#[derive(Debug, Clone)]
pub struct TokenStore {
    file: StateFile,
}

impl TokenStore {
    /// The token store of the state directory `state_dir` (nothing is read
    /// or created until used).
    pub fn open(state_dir: &Path) -> TokenStore {
        TokenStore {
            file: StateFile::new(state_dir, TOKENS_FILE),
        }
    }

    /// The token file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Makes and stores a token. The returned [`NewToken`] carries the
    /// secret, which is not stored: show it once and forget it.
    pub fn create(&self, opts: &TokenOptions, now: SystemTime) -> Result<NewToken, StoreError> {
        if opts.ttl.is_zero() || opts.ttl > MAX_TTL {
            return Err(StoreError::Invalid(format!(
                "a token's time to live (--ttl) must be more than 0 and at most 365d (every token expires); got {}s",
                opts.ttl.as_secs()
            )));
        }
        if let Some(d) = &opts.description {
            if d.chars().any(char::is_control) {
                return Err(StoreError::Invalid(
                    "a token's description must be one line of text (no control characters)".into(),
                ));
            }
        }
        let rng = SystemRandom::new();
        let secret = random_string(&rng, SECRET_LEN)?;
        let created = from_secs(to_secs(now));
        let expires = from_secs(to_secs(now).saturating_add(opts.ttl.as_secs().max(1)));
        self.file.update(|text| {
            let mut records = parse(&self.file, text)?;
            purge(&mut records, now);
            let id = loop {
                let id = random_string(&rng, ID_LEN)?;
                if !records.iter().any(|r| r.info.id == id) {
                    break id;
                }
            };
            let info = TokenInfo {
                id: id.clone(),
                created,
                expires,
                node: opts.node.clone(),
                usage: opts.usage,
                single_use: opts.single_use,
                used: None,
                description: opts.description.clone().filter(|d| !d.is_empty()),
            };
            records.push(Record {
                info: info.clone(),
                hash: hash(secret.as_bytes()),
            });
            Ok((
                Some(render(&records)),
                NewToken {
                    id,
                    secret,
                    expires,
                    info,
                },
            ))
        })
    }

    /// Every stored token, oldest first, without secrets (expired ones
    /// that were not yet removed included).
    pub fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let records = parse(&self.file, &self.file.read()?)?;
        Ok(records.into_iter().map(|r| r.info).collect())
    }

    /// Removes the token `id`; an error if there is none.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.file.update(|text| {
            let mut records = parse(&self.file, text)?;
            let before = records.len();
            records.retain(|r| r.info.id != id);
            if records.len() == before {
                return Err(StoreError::NoSuchToken { id: id.into() });
            }
            Ok((Some(render(&records)), ()))
        })
    }

    /// Checks `token` (`ID.SECRET`) for getting a certificate for `node`,
    /// and marks a single-use token used. `node_has_live_cert` says whether
    /// the node already holds a live certificate (then usage `rejoin` is
    /// needed). The secret is checked before anything else about the
    /// token is told. A single-use token is consumed under the file's
    /// lock, so of any number of concurrent redeems, in this process or
    /// others, exactly one succeeds.
    pub fn redeem(
        &self,
        token: &str,
        node: &NodeName,
        node_has_live_cert: bool,
        now: SystemTime,
    ) -> Result<Redeemed, TokenError> {
        let (id, secret) = split(token).ok_or(TokenError::Malformed)?;
        let presented = hash(secret.as_bytes());
        // Only the token's own line is parsed: a join costs a read and a
        // scan of the file, however many tokens it holds.
        let record = find(&self.file, &self.file.read()?, id)?;
        let redeemed = check(
            record.as_ref(),
            id,
            &presented,
            node,
            node_has_live_cert,
            now,
        )?;
        if !redeemed.single_use {
            return Ok(redeemed);
        }
        // Again under the lock: another redeem may have won meanwhile.
        self.file.update(|text| {
            let mut record = find(&self.file, text, id)?;
            let redeemed = check(
                record.as_ref(),
                id,
                &presented,
                node,
                node_has_live_cert,
                now,
            )?;
            if let Some(r) = record.as_mut() {
                r.info.used = Some((from_secs(to_secs(now)), node.clone()));
            }
            let mut out = String::from(HEADER);
            for line in text.lines() {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match &record {
                    Some(r) if is_line_of(line, id) => out.push_str(&render_line(r)),
                    // Expired: dropped. A line that does not parse is kept
                    // as it is, for `token list` to report.
                    _ if expires_of(line).is_some_and(|e| e <= now) => {}
                    _ => {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            Ok((Some(out), redeemed))
        })
    }
}

/// The checks of [`TokenStore::redeem`], in the order that tells nothing
/// about a token to whoever lacks its secret.
fn check(
    record: Option<&Record>,
    id: &str,
    presented: &[u8; 32],
    node: &NodeName,
    node_has_live_cert: bool,
    now: SystemTime,
) -> Result<Redeemed, TokenError> {
    let Some(r) = record else {
        return Err(TokenError::Unknown { id: id.into() });
    };
    if !constant_time_eq(&r.hash, presented) {
        return Err(TokenError::WrongSecret { id: id.into() });
    }
    let info = &r.info;
    if now >= info.expires {
        return Err(TokenError::Expired {
            id: id.into(),
            at: info.expires,
        });
    }
    if let Some((at, by)) = &info.used {
        return Err(TokenError::AlreadyUsed {
            id: id.into(),
            at: *at,
            by: by.clone(),
        });
    }
    if let Some(bound) = info.node.as_ref().filter(|b| *b != node) {
        return Err(TokenError::WrongNode {
            id: id.into(),
            bound: bound.clone(),
            asked: node.clone(),
        });
    }
    if node_has_live_cert && info.usage != Usage::Rejoin {
        return Err(TokenError::NeedsRejoin {
            id: id.into(),
            node: node.clone(),
        });
    }
    Ok(Redeemed {
        id: id.into(),
        node: node.clone(),
        usage: info.usage,
        rejoin: node_has_live_cert,
        single_use: info.single_use,
    })
}

/// `ID.SECRET` split, if both parts have the right length and alphabet.
fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, len| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
    (ok(id, ID_LEN) && ok(secret, SECRET_LEN)).then_some((id, secret))
}

/// SHA-256 of a secret.
fn hash(secret: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, secret).as_ref());
    out
}

/// Equality that looks at every byte whatever the first difference, so
/// the time taken says nothing about how much of a guess was right.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `len` characters of [`ALPHABET`], uniformly: bytes of 252 or more
/// (252 = 7 × 36) are drawn again rather than folded, which would favour
/// some characters.
fn random_string(rng: &SystemRandom, len: usize) -> Result<String, StoreError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| {
            StoreError::Invalid("the system's random source failed; no token was made".into())
        })?;
        for b in buf.iter().filter(|b| **b < 252) {
            if out.len() < len {
                out.push(char::from(ALPHABET[usize::from(*b % 36)]));
            }
        }
    }
    Ok(out)
}

/// Drops tokens that expired by `now`.
fn purge(records: &mut Vec<Record>, now: SystemTime) {
    records.retain(|r| r.info.expires > now);
}

/// The file's text for `records`.
fn render(records: &[Record]) -> String {
    let mut out = String::from(HEADER);
    for r in records {
        out.push_str(&render_line(r));
    }
    out
}

/// One record's line, with its newline.
fn render_line(r: &Record) -> String {
    let i = &r.info;
    let (used_at, used_by) = match &i.used {
        Some((at, by)) => (to_secs(*at).to_string(), by.as_str().to_string()),
        None => ("-".into(), "-".into()),
    };
    let description = match &i.description {
        Some(d) => serde_json::Value::String(d.clone()).to_string(),
        None => "-".into(),
    };
    format!(
        "{} {} {} {} {} {} {} {used_at} {used_by} {description}\n",
        i.id,
        hex(&r.hash),
        to_secs(i.created),
        to_secs(i.expires),
        i.node.as_ref().map_or("-", NodeName::as_str),
        i.usage.as_str(),
        if i.single_use { "single" } else { "multi" },
    )
}

/// Whether `line` is the line of token `id`.
fn is_line_of(line: &str, id: &str) -> bool {
    line.len() > ID_LEN && line.starts_with(id) && line.as_bytes()[ID_LEN] == b' '
}

/// The expiry field of a line, if it parses.
fn expires_of(line: &str) -> Option<SystemTime> {
    line.split(' ').nth(3)?.parse().ok().map(from_secs)
}

/// The record of token `id` in the file's text, parsing only its line.
fn find(file: &StateFile, text: &str, id: &str) -> Result<Option<Record>, StoreError> {
    match text
        .lines()
        .enumerate()
        .find(|(_, line)| is_line_of(line, id))
    {
        Some((n, line)) => parse_line(file, n + 1, line),
        None => Ok(None),
    }
}

/// The records in the file's text; errors name the line.
fn parse(file: &StateFile, text: &str) -> Result<Vec<Record>, StoreError> {
    let mut records: Vec<Record> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(record) = parse_line(file, n + 1, line)? else {
            continue;
        };
        if records.iter().any(|r| r.info.id == record.info.id) {
            return Err(file.corrupt(n + 1, "a second token with this id"));
        }
        records.push(record);
    }
    Ok(records)
}

/// The record on line `n` (from 1); `None` for a comment or blank line.
fn parse_line(file: &StateFile, n: usize, line: &str) -> Result<Option<Record>, StoreError> {
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let bad = |why: &str| file.corrupt(n, why);
    let fields: Vec<&str> = line.splitn(10, ' ').collect();
    let [id, hash_hex, created, expires, node, usage, single, used_at, used_by, description] =
        fields[..]
    else {
        return Err(bad("expected 10 fields"));
    };
    if id.len() != ID_LEN || !id.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(bad("bad token id"));
    }
    let hash: [u8; 32] = unhex(hash_hex)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| bad("the secret's hash is not 64 hex digits"))?;
    let secs = |s: &str, what: &str| {
        s.parse::<u64>()
            .map(from_secs)
            .map_err(|_| bad(&format!("{what} is not a number of seconds")))
    };
    let name = |s: &str| match s {
        "-" => Ok(None),
        s => NodeName::new(s).map(Some).map_err(|e| bad(&e.to_string())),
    };
    let used = match (used_at, name(used_by)?) {
        ("-", None) => None,
        (at, Some(by)) => Some((secs(at, "used-at")?, by)),
        (_, None) => return Err(bad("used-at without used-by")),
    };
    let description = match description {
        "-" => None,
        d => Some(
            serde_json::from_str::<String>(d)
                .map_err(|_| bad("the description is not a JSON string"))?,
        ),
    };
    Ok(Some(Record {
        info: TokenInfo {
            id: id.into(),
            created: secs(created, "created")?,
            expires: secs(expires, "expires")?,
            node: name(node)?,
            usage: usage.parse().map_err(|e: String| bad(&e))?,
            single_use: match single {
                "single" => true,
                "multi" => false,
                _ => return Err(bad("single-use is neither single nor multi")),
            },
            used,
            description,
        },
        hash,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::store::test_dir::TempDir;
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Barrier};

    fn node(n: &str) -> NodeName {
        NodeName::new(n).expect("node name")
    }

    fn now() -> SystemTime {
        from_secs(to_secs(SystemTime::now()))
    }

    fn create(store: &TokenStore, opts: TokenOptions) -> NewToken {
        store.create(&opts, now()).expect("create")
    }

    #[test]
    fn a_created_token_redeems_and_only_its_hash_is_stored() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let t = create(
            &store,
            TokenOptions {
                description: Some("rack 3, \"new\" boards".into()),
                ..TokenOptions::default()
            },
        );
        let text = t.to_string();
        assert_eq!(text.len(), ID_LEN + 1 + SECRET_LEN);
        assert!(split(&text).is_some(), "{text}");
        assert_eq!(t.expires, now() + DEFAULT_TTL);
        assert!(!format!("{t:?}").contains(t.secret()));
        let file = std::fs::read_to_string(store.path()).expect("read");
        assert!(!file.contains(t.secret()), "{file}");
        assert!(file.contains(&hex(&hash(t.secret().as_bytes()))), "{file}");
        assert_eq!(
            std::fs::metadata(store.path())
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let r = store
            .redeem(&text, &node("edge-1"), false, now())
            .expect("redeem");
        assert_eq!(
            r,
            Redeemed {
                id: t.id.clone(),
                node: node("edge-1"),
                usage: Usage::Join,
                rejoin: false,
                single_use: false
            }
        );
        // A multi-use token keeps working, for other nodes too.
        store
            .redeem(&text, &node("edge-2"), false, now())
            .expect("again");
        let listed = store.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0], t.info);
        assert_eq!(
            listed[0].description.as_deref(),
            Some("rack 3, \"new\" boards")
        );
    }

    #[test]
    fn errors_say_what_is_wrong_without_the_secret() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let t = create(&store, TokenOptions::default());
        let n = node("edge-1");
        for bad in [
            "",
            "abc",
            "abcdef.short",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdefg",
        ] {
            let e = store.redeem(bad, &n, false, now()).expect_err(bad);
            assert!(matches!(e, TokenError::Malformed), "{bad}: {e:?}");
            assert!(e.to_string().contains("ID.SECRET"), "{e}");
        }
        let e = store
            .redeem(&format!("zzzzzz.{}", t.secret()), &n, false, now())
            .expect_err("unknown id");
        assert!(
            matches!(&e, TokenError::Unknown { id } if id == "zzzzzz"),
            "{e:?}"
        );
        assert!(e.to_string().contains("tether-hub token create"), "{e}");
        assert!(!e.to_string().contains(t.secret()), "{e}");
        // A secret differing in its last character only, and one in its first.
        let mut wrong = t.secret().to_string();
        let last = if wrong.ends_with('a') { "b" } else { "a" };
        wrong.replace_range(SECRET_LEN - 1.., last);
        for guess in [wrong, format!("{}{}", last, &t.secret()[1..])] {
            let token = format!("{}.{guess}", t.id);
            let e = store.redeem(&token, &n, false, now()).expect_err("wrong");
            assert!(
                matches!(&e, TokenError::WrongSecret { id } if *id == t.id),
                "{e:?}"
            );
            assert!(!e.to_string().contains(&guess), "{e}");
        }
    }

    #[test]
    fn a_wrong_secret_learns_nothing_else_about_an_expired_token() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let t = create(
            &store,
            TokenOptions {
                ttl: Duration::from_secs(60),
                node: Some(node("edge-1")),
                ..TokenOptions::default()
            },
        );
        let later = now() + Duration::from_secs(61);
        let e = store
            .redeem(
                &format!("{}.{}", t.id, "0".repeat(16)),
                &node("x"),
                false,
                later,
            )
            .expect_err("wrong secret");
        assert!(matches!(e, TokenError::WrongSecret { .. }), "{e:?}");
        let e = store
            .redeem(&t.to_string(), &node("edge-1"), false, later)
            .expect_err("expired");
        assert!(
            matches!(&e, TokenError::Expired { at, .. } if *at == t.expires),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("token {} expired at {}", t.id, rfc3339(t.expires)))
                && msg.contains("tether-hub token create"),
            "{msg}"
        );
        // Exactly at the expiry it is expired already.
        assert!(matches!(
            store.redeem(&t.to_string(), &node("edge-1"), false, t.expires),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn a_single_use_token_works_once_and_then_names_its_user() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let t = create(
            &store,
            TokenOptions {
                single_use: true,
                ..TokenOptions::default()
            },
        );
        let r = store
            .redeem(&t.to_string(), &node("edge-1"), false, now())
            .expect("first");
        assert!(r.single_use);
        let e = store
            .redeem(&t.to_string(), &node("edge-2"), false, now())
            .expect_err("second");
        assert!(
            matches!(&e, TokenError::AlreadyUsed { by, .. } if *by == node("edge-1")),
            "{e:?}"
        );
        assert!(e.to_string().contains("already used"), "{e}");
        assert!(e.to_string().contains("by node edge-1"), "{e}");
        let listed = store.list().expect("list");
        assert_eq!(listed[0].used.as_ref().map(|u| &u.1), Some(&node("edge-1")));
    }

    #[test]
    fn a_bound_token_refuses_other_names() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let t = create(
            &store,
            TokenOptions {
                node: Some(node("edge-1")),
                ..TokenOptions::default()
            },
        );
        let e = store
            .redeem(&t.to_string(), &node("edge-2"), false, now())
            .expect_err("other node");
        assert!(
            matches!(&e, TokenError::WrongNode { bound, asked, .. } if *bound == node("edge-1") && *asked == node("edge-2")),
            "{e:?}"
        );
        assert!(e.to_string().contains("--node-name edge-1"), "{e}");
        store
            .redeem(&t.to_string(), &node("edge-1"), false, now())
            .expect("its node");
    }

    #[test]
    fn replacing_a_live_certificate_needs_rejoin() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let join = create(&store, TokenOptions::default());
        let e = store
            .redeem(&join.to_string(), &node("edge-1"), true, now())
            .expect_err("live cert");
        assert!(
            matches!(&e, TokenError::NeedsRejoin { node: n, .. } if *n == node("edge-1")),
            "{e:?}"
        );
        assert!(e.to_string().contains("--usages rejoin"), "{e}");
        let rejoin = create(
            &store,
            TokenOptions {
                usage: "rejoin".parse().expect("usage"),
                ..TokenOptions::default()
            },
        );
        let r = store
            .redeem(&rejoin.to_string(), &node("edge-1"), true, now())
            .expect("rejoin");
        assert!(r.rejoin);
        // Rejoin includes join.
        let r = store
            .redeem(&rejoin.to_string(), &node("edge-9"), false, now())
            .expect("join");
        assert!(!r.rejoin);
    }

    #[test]
    fn a_broken_store_tells_the_edge_nothing_of_the_hubs_files() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let t = create(&store, TokenOptions::default());
        let damaged = format!("{} zz 1 2 - join multi - - -\n", t.id);
        std::fs::write(store.path(), damaged).expect("write");
        let e = store
            .redeem(&t.to_string(), &node("edge-1"), false, now())
            .expect_err("corrupt");
        assert!(matches!(e, TokenError::Store(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("hub's operator") && !text.contains("line 1"),
            "{text}"
        );
        let inner = std::error::Error::source(&e).expect("source").to_string();
        assert!(
            inner.contains("line 1") && inner.contains("tokens"),
            "{inner}"
        );
    }

    #[test]
    fn usages_parse() {
        assert_eq!("join".parse(), Ok(Usage::Join));
        assert_eq!("join,rejoin".parse(), Ok(Usage::Rejoin));
        assert_eq!("rejoin,join".parse(), Ok(Usage::Rejoin));
        assert_eq!("rejoin".parse(), Ok(Usage::Rejoin));
        let e = "join,admin".parse::<Usage>().expect_err("unknown");
        assert!(e.contains("\"admin\""), "{e}");
        assert!("".parse::<Usage>().is_err());
    }

    #[test]
    fn ttl_must_be_finite_and_bounded() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        for ttl in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
            let e = store
                .create(
                    &TokenOptions {
                        ttl,
                        ..TokenOptions::default()
                    },
                    now(),
                )
                .expect_err("ttl");
            assert!(e.to_string().contains("365d"), "{e}");
        }
        store
            .create(
                &TokenOptions {
                    ttl: MAX_TTL,
                    ..TokenOptions::default()
                },
                now(),
            )
            .expect("365d is fine");
    }

    #[test]
    fn delete_removes_and_names_unknown_ids() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let a = create(&store, TokenOptions::default());
        let b = create(&store, TokenOptions::default());
        store.delete(&a.id).expect("delete");
        let ids: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, std::slice::from_ref(&b.id));
        assert!(matches!(
            store.redeem(&a.to_string(), &node("edge-1"), false, now()),
            Err(TokenError::Unknown { .. })
        ));
        let e = store.delete(&a.id).expect_err("again");
        assert!(
            matches!(&e, StoreError::NoSuchToken { id } if *id == a.id),
            "{e:?}"
        );
        assert!(e.to_string().contains("tether-hub token list"), "{e}");
    }

    #[test]
    fn expired_tokens_are_purged_on_rewrite_and_used_ones_kept_until_then() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        let short = create(
            &store,
            TokenOptions {
                ttl: Duration::from_secs(60),
                single_use: true,
                ..TokenOptions::default()
            },
        );
        store
            .redeem(&short.to_string(), &node("edge-1"), false, now())
            .expect("use");
        create(&store, TokenOptions::default());
        assert_eq!(
            store.list().expect("list").len(),
            2,
            "used kept until expiry"
        );
        store
            .create(&TokenOptions::default(), now() + Duration::from_secs(61))
            .expect("create later");
        let ids: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(!ids.contains(&short.id));

        // A single-use redeem rewrites the file too: it drops what expired
        // and leaves every other token as it was.
        let brief = create(
            &store,
            TokenOptions {
                ttl: Duration::from_secs(60),
                ..TokenOptions::default()
            },
        );
        let once = create(
            &store,
            TokenOptions {
                single_use: true,
                description: Some("once".into()),
                ..TokenOptions::default()
            },
        );
        let before: Vec<TokenInfo> = store.list().expect("list");
        store
            .redeem(
                &once.to_string(),
                &node("edge-2"),
                false,
                now() + Duration::from_secs(61),
            )
            .expect("redeem");
        let after = store.list().expect("list");
        let kept: Vec<&TokenInfo> = before
            .iter()
            .filter(|i| i.id != brief.id && i.id != once.id)
            .collect();
        assert_eq!(after.len(), kept.len() + 1, "{after:?}");
        for i in kept {
            assert!(after.contains(i), "{i:?} lost");
        }
        assert!(after.iter().all(|i| i.id != brief.id));
        let used = after.iter().find(|i| i.id == once.id).expect("used kept");
        assert_eq!(used.used.as_ref().map(|u| &u.1), Some(&node("edge-2")));
        assert_eq!(used.description.as_deref(), Some("once"));
    }

    #[test]
    fn one_of_many_concurrent_redeems_of_a_single_use_token_wins() {
        let tmp = TempDir::new("tokens");
        let t = create(
            &TokenStore::open(tmp.path()),
            TokenOptions {
                single_use: true,
                ..TokenOptions::default()
            },
        )
        .to_string();
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                // A store per thread, as separate processes would have.
                let store = TokenStore::open(tmp.path());
                let (t, barrier) = (t.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.redeem(&t, &node(&format!("edge-{i}")), false, now())
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, TokenError::AlreadyUsed { by, .. } if *by == won[0].node),
                    "{e:?}"
                );
            }
        }
    }

    #[test]
    fn the_file_round_trips_and_bad_lines_are_named() {
        let tmp = TempDir::new("tokens");
        let store = TokenStore::open(tmp.path());
        create(
            &store,
            TokenOptions {
                node: Some(node("edge-1")),
                usage: Usage::Rejoin,
                single_use: true,
                description: Some("for edge-1".into()),
                ..TokenOptions::default()
            },
        );
        let text = std::fs::read_to_string(store.path()).expect("read");
        let records = parse(&store.file, &text).expect("parse");
        assert_eq!(render(&records), text);
        std::fs::write(store.path(), format!("{text}garbage\n")).expect("write");
        let e = store.list().expect_err("corrupt");
        assert!(
            e.to_string()
                .contains(&format!("line {}", text.lines().count() + 1)),
            "{e}"
        );
        assert!(e.to_string().contains("tokens"), "{e}");
    }

    #[test]
    fn random_strings_use_the_whole_alphabet() {
        let rng = SystemRandom::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.extend(random_string(&rng, SECRET_LEN).expect("random").bytes());
        }
        assert_eq!(seen.len(), 36);
    }
}
