//! Request ids and W3C trace context.
//!
//! Request ids: a random per-process prefix and a counter, shuffled by a permutation
//! keyed by a per-process random key. Unique, cheap, and unlike a client-sent `X-Request-Id`,
//! trustworthy; a client comparing two of its ids no longer reads how many requests
//! the gateway served in between (a count of every tenant's traffic). A request that arrives without a valid
//! `traceparent` gets one, so a trace can follow it through gateway and backend: its
//! ids come from the same counter, mixed with a per-process random seed (unique per
//! process, unpredictable enough for sampling; not a secret).

use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering};

/// The process's request ids (one prefix and counter per process).
pub fn ids() -> &'static RequestIds {
    static IDS: std::sync::OnceLock<RequestIds> = std::sync::OnceLock::new();
    IDS.get_or_init(RequestIds::new)
}

pub struct RequestIds {
    prefix: u32,
    seed: u64,
    /// The request-id shuffle's round keys, from the seed.
    keys: [u64; 4],
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 20];
        // A fixed seed only weakens uniqueness across restarts, never safety.
        let _ = getrandom::getrandom(&mut seed);
        let word =
            |at: usize| u64::from_le_bytes(seed.get(at..at + 8).and_then(|b| b.try_into().ok()).unwrap_or_default());
        let prefix = u32::from_le_bytes(seed.get(..4).and_then(|b| b.try_into().ok()).unwrap_or_default());
        RequestIds::with(prefix, word(4), word(12), 1)
    }

    /// `seed` makes the trace ids and `shuffle` the request ids' round keys: two random
    /// words, so that a generated `traceparent` (the backend and the log see it; its
    /// words undo to the seed) tells nothing of the request-id shuffle.
    fn with(prefix: u32, seed: u64, shuffle: u64, next: u64) -> Self {
        RequestIds { prefix, seed, keys: round_keys(shuffle), next: AtomicU64::new(next) }
    }

    /// A new `traceparent` (version 00, sampled): `00-<trace id>-<parent id>-01`.
    pub fn traceparent(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // All three words depend on the seed: a parent id from the counter alone would
        // repeat in every process and after every restart.
        let ids = [mix(self.seed ^ n), mix(self.seed.rotate_left(32) ^ n), mix(mix(self.seed) ^ n)];
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
        for (word, at) in ids.iter().zip([3, 19, 36]) {
            if let Some(slot) = buf.get_mut(at..at + 16) {
                let _ = hex::encode_to_slice(word.to_be_bytes(), slot);
            }
        }
        fresh(&buf)
    }

    /// `pppppppp-nnnnnnnnnnnn`: prefix and shuffled counter in hex, built without
    /// `format!`.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [b'-'; 21];
        let (prefix, counter) = buf.split_at_mut(8);
        let _ = hex::encode_to_slice(self.prefix.to_be_bytes(), prefix);
        // The counter's low 48 bits, shuffled, after the dash.
        let _ = hex::encode_to_slice(&shuffle(n, &self.keys).to_be_bytes()[2..], &mut counter[1..]);
        fresh(&buf)
    }
}

/// A value no other message carries, marked sensitive so that HTTP/2's header
/// compression sends it as a literal that is never indexed (RFC 7541, 6.2.3), as nginx
/// and HAProxy send every field. Indexed, each new id would be inserted into the
/// connection's dynamic table, evicting the fields that do repeat and lengthening every
/// later lookup of that name. HTTP/1.1 writes it the same either way.
fn fresh(buf: &[u8]) -> HeaderValue {
    let mut value = HeaderValue::from_bytes(buf).unwrap_or(HeaderValue::from_static("-"));
    value.set_sensitive(true);
    value
}

/// The low 48 bits of a counter through a permutation keyed by `keys`: four Feistel rounds over
/// its two 24-bit halves, so distinct counters give distinct ids for 2^48 requests
/// (whatever the round function, a Feistel network is a permutation), while the round
/// function, `mix` of the half and the round's key, hides the counter's order. A
/// disguise, not a secret: the ids are no credential.
fn shuffle(n: u64, keys: &[u64; 4]) -> u64 {
    const HALF: u64 = (1 << 24) - 1;
    let (mut left, mut right) = ((n >> 24) & HALF, n & HALF);
    for key in keys {
        (left, right) = (right, left ^ (mix(right ^ key) & HALF));
    }
    (left << 24) | right
}

/// The four round keys of [`shuffle`], each its own mix of the seed.
fn round_keys(seed: u64) -> [u64; 4] {
    let mut round = 0u64;
    [(); 4].map(|()| {
        round += 1;
        mix(seed.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    })
}

/// splitmix64's finaliser: spreads a counter's bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The trace id of a valid `traceparent` (W3C Trace Context level 1: version, 32 and
/// 16 lower-case hex ids, not all zeros, flags); `None` for anything else. The fields
/// have fixed lengths, so they are read at fixed offsets: `vv-<32>-<16>-ff`, and for a
/// version after 00 possibly `-` and more.
pub fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    let at = |i: usize| traceparent.get(i).copied();
    if traceparent.len() < 55 || at(2) != Some(b'-') || at(35) != Some(b'-') || at(52) != Some(b'-') {
        return None;
    }
    let (version, trace) = (traceparent.get(..2)?, traceparent.get(3..35)?);
    let (parent, flags) = (traceparent.get(36..52)?, traceparent.get(53..55)?);
    let rest = match traceparent.len() {
        55 => true,
        _ => version != b"00" && at(55) == Some(b'-'),
    };
    let valid = rest
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && nonzero(trace)
        && hex(parent)
        && nonzero(parent)
        && hex(flags);
    // The whole value is text, as a reading by pieces needs.
    (valid && std::str::from_utf8(traceparent).is_ok()).then(|| std::str::from_utf8(trace).ok()).flatten()
}

/// The trace id of a `traceparent` the gateway may pass on and log: a valid one (see
/// [`trace_id`]) neither of whose ids shows a run of a credential's characters
/// ([`shows_run_of`]). A client that derived its trace from its token would otherwise
/// have the token's digits written to the access log and sent to a backend that
/// `forward_token = false` keeps the token from.
pub fn passable_trace_id<'a>(traceparent: &'a [u8], credentials: &[&[u8]]) -> Option<&'a str> {
    let trace = trace_id(traceparent)?;
    // Both ids have fixed lengths whatever the version: `vv-<32>-<16>-...`.
    let parent = traceparent.get(36..52)?;
    let shown = credentials.iter().any(|c| shows_run_of(trace.as_bytes(), c) || shows_run_of(parent, c));
    (!shown).then_some(trace)
}

/// The shortest run of a credential's characters that counts as showing it: 16, half
/// of a secret's 32 digits, a parent id's length.
const RUN: usize = 16;

/// Whether `text` shows [`RUN`] consecutive characters of `credential` (any case):
/// the whole credential in a trace id, a part of it, or a part shifted by one.
pub fn shows_run_of(text: &[u8], credential: &[u8]) -> bool {
    if text.len() < RUN || credential.len() < RUN {
        return false;
    }
    // Short texts (a trace id against a token, on every request that sends one) are
    // compared window by window, with no allocation; long ones through their runs.
    if (text.len() - RUN + 1).saturating_mul(credential.len() - RUN + 1) > DIRECT_PAIRS {
        return Runs::of(text).show(credential);
    }
    // Most windows differ at their first byte: that one is compared first.
    credential.windows(RUN).any(|run| {
        let first = run[0];
        text.windows(RUN).any(|w| w[0].eq_ignore_ascii_case(&first) && w.eq_ignore_ascii_case(run))
    })
}

/// Up to how many pairs of windows two texts are compared window by window.
const DIRECT_PAIRS: usize = 1024;

/// A text's runs of [`RUN`] characters, in lower case, each read as one number and
/// sorted: a credential's runs are then looked up, not compared with every window.
/// Linear in the lengths (bar the sort), which matters because both come from the
/// client (the diff review's finding: comparing every window of a long `tracestate`
/// with every window of a long `authorization` took 614 ms of CPU per request).
struct Runs(Vec<u128>);

impl Runs {
    fn of(text: &[u8]) -> Runs {
        let mut runs = keys(text);
        runs.sort_unstable();
        Runs(runs)
    }

    fn show(&self, credential: &[u8]) -> bool {
        keys(credential).iter().any(|key| self.0.binary_search(key).is_ok())
    }
}

/// Each run of [`RUN`] characters of `text`, in lower case, as one number.
fn keys(text: &[u8]) -> Vec<u128> {
    let lower = text.to_ascii_lowercase();
    lower.windows(RUN).filter_map(|w| <[u8; RUN]>::try_from(w).ok()).map(u128::from_le_bytes).collect()
}

/// What an access line is checked against, at most; past it the path is withheld
/// unread (fails closed): more credentials, a longer one (no credential this gateway
/// takes is longer), or a longer path. One client could otherwise make every request
/// cost milliseconds (the thirty-fifth outside probe: 100 ms of a debug build's CPU for
/// a 63 KB credential, sent over HTTP/2 in 140 bytes a request).
pub const MAX_CREDENTIALS: usize = 16;
pub const MAX_CHECKED_CREDENTIAL: usize = 256;
pub const MAX_CHECKED_PATH: usize = 2048;

/// Whether `text` shows any of `credentials`: a run of one (see [`shows_run_of`]), or
/// the whole of one shorter than a run (a user's authtoken may be; under 8 characters
/// it is no secret worth a withheld path), as it is or by its letters and digits alone
/// (`alice-auth~token-very~secret` split into pieces shorter than a run). Past the
/// bounds above it is taken as shown.
pub fn shows_any(text: &[u8], credentials: &[bytes::Bytes]) -> bool {
    if credentials.len() > MAX_CREDENTIALS || credentials.iter().any(|c| c.len() > MAX_CHECKED_CREDENTIAL) {
        return true;
    }
    let mut plain = Reading::new(text);
    let mut letters = None;
    credentials.iter().any(|c| {
        let letters_of_c = alphanumeric(c);
        let (in_plain, in_letters) = stretches(text, c, letters_of_c.len());
        (in_plain && plain.shows(c))
            || (in_letters && letters.get_or_insert_with(|| Reading::new(alphanumeric(text))).shows(&letters_of_c))
    })
}

/// `text`'s letters and digits alone (borrowed when it has nothing else).
fn alphanumeric(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match text.iter().all(u8::is_ascii_alphanumeric) {
        true => std::borrow::Cow::Borrowed(text),
        false => std::borrow::Cow::Owned(text.iter().copied().filter(u8::is_ascii_alphanumeric).collect()),
    }
}

/// Whether `text` could show `credential` at all, as it is and by letters and digits
/// alone (`letters`: how many `credential` has): a run needs a stretch of as many
/// consecutive characters (16, or the whole of a shorter credential) that `credential`
/// holds too, case ignored; by letters, separators between them aside. Most texts have
/// neither (a management token holds `cs` and hex digits only), and need no comparison.
fn stretches(text: &[u8], credential: &[u8], letters: usize) -> (bool, bool) {
    let mut held = [false; 256];
    for &b in credential {
        held[usize::from(b.to_ascii_lowercase())] = true;
    }
    let (need, need_letters) = (credential.len().min(RUN), letters.min(RUN));
    let (mut plain, mut by_letters) = (0, 0);
    let (mut found_plain, mut found_letters) = (false, false);
    for &b in text {
        let is_held = held[usize::from(b.to_ascii_lowercase())];
        plain = if is_held { plain + 1 } else { 0 };
        if b.is_ascii_alphanumeric() {
            by_letters = if is_held { by_letters + 1 } else { 0 };
        }
        found_plain |= plain >= need;
        found_letters |= by_letters >= need_letters;
        if found_plain && found_letters {
            break;
        }
    }
    (found_plain && credential.len() >= 8, found_letters && letters >= 8)
}

/// A text read for credentials: its runs collected once for all of them.
struct Reading<'a> {
    text: std::borrow::Cow<'a, [u8]>,
    runs: Option<Runs>,
}

impl<'a> Reading<'a> {
    fn new(text: impl Into<std::borrow::Cow<'a, [u8]>>) -> Self {
        Reading { text: text.into(), runs: None }
    }

    fn shows(&mut self, credential: &[u8]) -> bool {
        let text = &*self.text;
        match credential.len() {
            0..8 => false,
            n if n < RUN => text.windows(n).any(|w| w.eq_ignore_ascii_case(credential)),
            _ if text.len() < RUN => false,
            _ => self.runs.get_or_insert_with(|| Runs::of(text)).show(credential),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_credential_is_shown_whole_or_by_a_run() {
        let shows = |text: &[u8], c: &'static [u8]| super::shows_any(text, &[bytes::Bytes::from_static(c)]);
        let path = b"/v3/content_types/Alice-Authtoken/entries";
        assert!(shows(path, b"alice-authtoken"));
        assert!(!shows(path, b"bob-authtoken"));
        assert!(!shows(path, b"types"), "too short to withhold a path for");
        assert!(shows(b"/v3/x4bf92f3577b34da6a3", b"cs4bf92f3577b34da6a3ce929d0e0e4736"));
        let many = vec![bytes::Bytes::from_static(b"unrelated-value"); super::MAX_CREDENTIALS + 1];
        assert!(super::shows_any(path, &many), "more than it checks: withheld");
        let long = bytes::Bytes::from(vec![b'z'; super::MAX_CHECKED_CREDENTIAL + 1]);
        assert!(super::shows_any(path, &[long]), "longer than it checks: withheld");
        // Pieces shorter than a run, split by other characters (the thirty-fifth probe).
        assert!(shows(b"/v3/content_types/alice-auth~token-very~secret-XYZ~123", b"alice-authtoken-verysecret-XYZ123"));
        assert!(shows(b"/v3/x/cs01234567-89abcdef01-23456789ab-cdef", b"cs0123456789abcdef0123456789abcdef"));
    }

    /// Long texts take the set of runs, with the same answers, case ignored.
    #[test]
    fn long_texts_are_compared_through_their_runs() {
        let mut text = vec![b'a'; 40_000];
        assert!(super::shows_run_of(&text, &vec![b'A'; 40_000]));
        // Fifteen `a`, a `b`, fifteen `a`: every run holds the `b`.
        let mut other = vec![b'a'; 31];
        other[15] = b'b';
        assert!(!super::shows_run_of(&text, &other));
        text.extend_from_slice(b"XBAAAAAAAAAAAAAAA");
        assert!(super::shows_run_of(&text, &other));
    }

    #[test]
    fn a_trace_made_of_a_credential_is_not_passed_on() {
        let secret = b"cs4bf92f3577b34da6a3ce929d0e0e4736";
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(super::passable_trace_id(ok.as_bytes(), &[secret]), super::trace_id(ok.as_bytes()));
        for made_of_it in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-a3ce929d0e0e4736-01",
            "00-0af7651916cd43dd8448eb211c80319c-4bf92f3577b34da6-01",
            // 31 of the 32 digits, and 16 of them inside other digits (the sixth attack).
            "00-bf92f3577b34da6a3ce929d0e0e47360-b7ad6b7169203331-01",
            "00-ffffffffffffffff4bf92f3577b34da6-b7ad6b7169203331-01",
        ] {
            assert!(super::trace_id(made_of_it.as_bytes()).is_some(), "{made_of_it}");
            assert_eq!(super::passable_trace_id(made_of_it.as_bytes(), &[b"x", secret]), None, "{made_of_it}");
            // In another case, the ids are still the secret's characters.
            let upper = secret.to_ascii_uppercase();
            assert_eq!(super::passable_trace_id(made_of_it.as_bytes(), &[&upper]), None, "{made_of_it}");
        }
    }

    /// The shuffle is a permutation of 48-bit counters (distinct in, distinct out, over
    /// runs at the start, around a 24-bit carry and at the top of the range), depends
    /// on the seed, and consecutive counters do not give ids near each other.
    #[test]
    fn request_ids_are_unique_and_do_not_count() {
        use std::collections::HashSet;
        for seed in [0, 7, u64::MAX, 0x0123_4567_89ab_cdef] {
            let keys = super::round_keys(seed);
            let mut seen = HashSet::new();
            for start in [0u64, (1 << 24) - 50_000, (1 << 48) - 100_000] {
                for n in start..start + 100_000 {
                    let id = super::shuffle(n, &keys);
                    assert!(id < 1 << 48, "{n}: {id:x}");
                    assert!(seen.insert(id), "seed {seed}: {n} repeats an id");
                }
            }
            let close =
                (1..10_000u64).filter(|&n| super::shuffle(n, &keys).abs_diff(super::shuffle(n - 1, &keys)) < 1 << 32);
            assert!(close.count() < 10, "seed {seed}: consecutive counters give near ids");
        }
        assert_ne!(super::shuffle(1, &super::round_keys(7)), super::shuffle(1, &super::round_keys(8)));
        // As served: one prefix per process, and counters not near each other.
        let ids = super::RequestIds::with(0xdeadbeef, 3, 7, 1);
        let counter = |id: http::HeaderValue| {
            assert_eq!((id.len(), &id.as_bytes()[..9]), (21, &b"deadbeef-"[..]));
            u64::from_str_radix(&id.to_str().unwrap()[9..], 16).unwrap()
        };
        let served: Vec<u64> = (0..1_000).map(|_| counter(ids.next())).collect();
        assert!(served.windows(2).filter(|w| w[0].abs_diff(w[1]) < 1 << 32).count() < 10);
    }

    #[test]
    fn generated_traceparents_are_valid_and_distinct() {
        let ids = super::RequestIds::new();
        let (a, b) = (ids.traceparent(), ids.traceparent());
        assert_ne!(a, b);
        let id = super::trace_id(a.as_bytes()).unwrap();
        assert_eq!(id.len(), 32);
        assert!(a.to_str().unwrap().ends_with("-01"));
        for bad in [
            "00-00000000000000000000000000000000-1111111111111111-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(super::trace_id(bad.as_bytes()).is_none(), "{bad}");
        }
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(super::trace_id(ok.as_bytes()), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    /// The reading by fixed offsets answers as the reading by `-` pieces it replaced,
    /// for every one-byte change of valid values of versions 00 and 01 (and each cut).
    #[test]
    fn trace_ids_are_read_as_the_pieces_say() {
        fn by_pieces(traceparent: &[u8]) -> Option<&str> {
            let text = std::str::from_utf8(traceparent).ok()?;
            let mut parts = text.split('-');
            let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
            let valid = hex(version, 2)
                && version != "ff"
                && hex(trace, 32)
                && nonzero(trace)
                && hex(parent, 16)
                && nonzero(parent)
                && hex(flags, 2)
                && (version != "00" || parts.next().is_none());
            valid.then_some(trace)
        }
        let valid = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
            "00-00000000000000000000000000000001-0000000000000001-00",
        ];
        for v in valid {
            assert!(super::trace_id(v.as_bytes()).is_some(), "{v}");
            for cut in 0..v.len() {
                assert_eq!(super::trace_id(&v.as_bytes()[..cut]), by_pieces(&v.as_bytes()[..cut]), "{v} cut at {cut}");
            }
            for at in 0..v.len() {
                for b in [b'0', b'f', b'g', b'F', b'-', b' ', 0xc3] {
                    let mut changed = v.as_bytes().to_vec();
                    changed[at] = b;
                    assert_eq!(super::trace_id(&changed), by_pieces(&changed), "{v}: {b} at {at}");
                }
            }
        }
    }

    #[test]
    fn ids_are_hex_and_shuffled_counters() {
        let ids = super::RequestIds::with(0xdeadbeef, 7, 7, 0x2a);
        assert_eq!(ids.next(), format!("deadbeef-{:012x}", super::shuffle(0x2a, &super::round_keys(7))).as_str());
        assert_eq!(ids.next(), format!("deadbeef-{:012x}", super::shuffle(0x2b, &super::round_keys(7))).as_str());
        // The trace ids are the mixed counter and seed, in lower-case hex.
        let n = 0x2c;
        let want = format!(
            "00-{:016x}{:016x}-{:016x}-01",
            super::mix(7 ^ n),
            super::mix(7u64.rotate_left(32) ^ n),
            super::mix(super::mix(7) ^ n)
        );
        assert_eq!(ids.traceparent(), want.as_str());
        // Another process (another seed) at the same count: other trace and parent ids.
        let other = super::RequestIds::with(0xdeadbeef, 8, 8, n);
        let (a, b) = (want, other.traceparent());
        assert_ne!(a.as_bytes()[3..35], b.as_bytes()[3..35], "trace ids");
        assert_ne!(a.as_bytes()[36..52], b.as_bytes()[36..52], "parent ids");
        // Never indexed by HTTP/2's header compression: no other message repeats it.
        assert!(ids.next().is_sensitive() && ids.traceparent().is_sensitive());
    }
}
