//! Compact label sets for the node cache: every (key, value) pair is held
//! once per process and shared by every node that carries it.
//!
//! A GB200 tray carries about fifty labels (GPU Feature Discovery's, Node
//! Feature Discovery's, the kubelet's), and all but two or three of them are
//! the same on every tray of a delivery. Held as a map of owned strings per
//! node they were 5 KB of the node's 8 KB in the cache (tests/view_memory.rs
//! counts it); held as pointers to shared pairs they are 8 bytes each.
//!
//! Interning is by value: two sets are equal exactly when their pairs are,
//! whatever order they were built in, so the planner reads the same thing
//! as from a map. A pair no node holds any more is freed (`internment`'s
//! `ArcIntern` counts references), so churn in label values cannot grow the
//! process without bound.

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use internment::ArcIntern;
use k8s_openapi::jiff::Timestamp;

/// Anything labels can be read from: a node's cached [`Labels`], or a map
/// (an object's labels as the API serves them). Selectors and domain keys
/// read either.
pub trait LabelSource {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSource for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl LabelSource for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A shared string: a condition type, a batch's UID, a recorded verdict.
/// Equal strings are one allocation for the whole process; a `Sym` is one
/// pointer, compared by value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(ArcIntern<String>);

/// Interns `s`.
pub fn sym(s: &str) -> Sym {
    Sym(ArcIntern::from_ref(s))
}

impl std::ops::Deref for Sym {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for Sym {
    fn default() -> Self {
        sym("")
    }
}

impl From<&str> for Sym {
    fn from(s: &str) -> Self {
        sym(s)
    }
}

impl From<String> for Sym {
    fn from(s: String) -> Self {
        Sym(ArcIntern::new(s))
    }
}

impl PartialEq<str> for Sym {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// One (key, value) pair, shared by every node that carries it. The key
/// is interned on its own (a pair unique to one node, its hostname say,
/// shares its key with every other node's), and a value of up to 24 bytes
/// is held inline: such a pair is one 40-byte allocation, not three
/// (128 bytes with the allocator's headers, as two `String`s).
type Pair = ArcIntern<(Sym, CompactString)>;

fn pair(key: &str, value: &str) -> Pair {
    ArcIntern::new((sym(key), CompactString::new(value)))
}

/// A node's labels (or its conditions, type to status), each key once, in
/// [`key_order`]. Reads like the `BTreeMap<String, String>` it replaces.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[Pair]>);

/// The order pairs are kept (and searched) in: by the key's length, then
/// the key. Most comparisons of a search end at the length, without
/// comparing bytes: keys share long prefixes (`nvidia.com/gpu.`,
/// `feature.node.kubernetes.io/`), and a plan reads a few labels of every
/// node of the pool.
pub fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Labels {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|p| key_order(&p.0, key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs in [`key_order`].
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|p| (&*p.0, p.1.as_str()))
    }

    /// Sets `key` to `value`, returning the value it replaced. Rebuilds the
    /// set: for tests and tools, not for hot paths.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        let mut pairs = self.0.to_vec();
        let pair = pair(&key, &value);
        let old = match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut pairs[i], pair).1.to_string()),
            Err(i) => {
                pairs.insert(i, pair);
                None
            }
        };
        self.0 = pairs.into_boxed_slice();
        old
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.find(key).ok()?;
        let mut pairs = self.0.to_vec();
        let old = pairs.remove(i).1.to_string();
        self.0 = pairs.into_boxed_slice();
        Some(old)
    }

    /// Keeps the pairs `keep` accepts (for tests and tools).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let pairs: Vec<Pair> = self
            .0
            .iter()
            .filter(|p| keep(&p.0, &p.1))
            .cloned()
            .collect();
        self.0 = pairs.into_boxed_slice();
    }

    /// The labels as an owned map (for writing them back to the API).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// The last value of a key repeated wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut given: Vec<(K, V)> = iter.into_iter().collect();
        // Stable sort, then keep the last of each key.
        given.sort_by(|a, b| key_order(a.0.as_ref(), b.0.as_ref()));
        let mut pairs: Vec<Pair> = Vec::with_capacity(given.len());
        for (k, v) in &given {
            let (k, v) = (k.as_ref(), v.as_ref());
            match pairs.last_mut() {
                Some(last) if *last.0 == *k => *last = pair(k, v),
                _ => pairs.push(pair(k, v)),
            }
        }
        Labels(pairs.into_boxed_slice())
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        map.iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Keys unique: intern the pairs, then put them in the search order.
        let mut pairs: Vec<Pair> = map.iter().map(|(k, v)| pair(k, v)).collect();
        pairs.sort_by(|a, b| key_order(&a.0, &b.0));
        Labels(pairs.into_boxed_slice())
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = str;
    /// The value of `key`; panics when absent, as a map's index does (for
    /// tests and tools).
    fn index(&self, key: &str) -> &str {
        self.get(key).expect("no such label")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// An instant that may be absent, in 12 bytes (an `Option<Timestamp>` takes
/// 24): the node cache holds four a node. Nothing is lost: the seconds and
/// nanoseconds are jiff's own, so every instant jiff can parse (the year
/// 9999 too) reads back exactly.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub struct Stamp {
    second: i64,
    /// `NONE_NANOS` when absent.
    nanosecond: i32,
}

const NONE_NANOS: i32 = i32::MIN;

impl Stamp {
    /// No instant.
    pub const NONE: Stamp = Stamp {
        second: 0,
        nanosecond: NONE_NANOS,
    };

    /// The instant, if there is one.
    pub fn get(self) -> Option<Timestamp> {
        let (second, nanosecond) = (self.second, self.nanosecond);
        if nanosecond == NONE_NANOS {
            return None;
        }
        // Made from a Timestamp, so always in range.
        Timestamp::new(second, nanosecond).ok()
    }

    pub fn is_some(self) -> bool {
        self.get().is_some()
    }

    pub fn is_none(self) -> bool {
        self.get().is_none()
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp::NONE
    }
}

impl From<Timestamp> for Stamp {
    fn from(t: Timestamp) -> Self {
        Stamp {
            second: t.as_second(),
            nanosecond: t.subsec_nanosecond(),
        }
    }
}

impl From<Option<Timestamp>> for Stamp {
    fn from(t: Option<Timestamp>) -> Self {
        t.map_or(Stamp::NONE, Stamp::from)
    }
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Stamp {}

impl PartialEq<Option<Timestamp>> for Stamp {
    fn eq(&self, other: &Option<Timestamp>) -> bool {
        self.get() == *other
    }
}

impl std::hash::Hash for Stamp {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.get().hash(state)
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// When each of a node's conditions last changed status, by type, sorted.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Stamps(Box<[(Sym, Timestamp)]>);

impl Stamps {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&Timestamp> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Sets `key`'s time (for tests and tools).
    pub fn insert(&mut self, key: String, at: Timestamp) -> Option<Timestamp> {
        let mut stamps = self.0.to_vec();
        let old = match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut stamps[i].1, at)),
            Err(i) => {
                stamps.insert(i, (sym(&key), at));
                None
            }
        };
        self.0 = stamps.into_boxed_slice();
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Timestamp)> {
        self.0.iter().map(|(k, t)| (&**k, t))
    }
}

impl<K: AsRef<str>> FromIterator<(K, Timestamp)> for Stamps {
    /// The last time of a key repeated wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, Timestamp)>>(iter: I) -> Self {
        let map: BTreeMap<String, Timestamp> = iter
            .into_iter()
            .map(|(k, t)| (k.as_ref().to_owned(), t))
            .collect();
        Stamps(map.into_iter().map(|(k, t)| (sym(&k), t)).collect())
    }
}

impl fmt::Debug for Stamps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_a_map_whatever_the_order_it_was_built_in() {
        let a: Labels = [("b", "2"), ("a", "1"), ("c", "3")].into_iter().collect();
        let b: Labels = [("c", "3"), ("a", "1"), ("b", "2")].into_iter().collect();
        assert_eq!(a, b);
        assert_eq!(a.get("b"), Some("2"));
        assert_eq!(a.get("z"), None);
        assert_eq!(
            a.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let map: BTreeMap<String, String> = a.to_map();
        assert_eq!(Labels::from(&map), a);
        assert_eq!(Labels::from(map), a);
    }

    #[test]
    fn the_last_value_of_a_repeated_key_wins() {
        let l: Labels = [("a", "1"), ("a", "2")].into_iter().collect();
        assert_eq!(l.len(), 1);
        assert_eq!(l.get("a"), Some("2"));
    }

    #[test]
    fn insert_and_remove_keep_the_order() {
        let mut l = Labels::default();
        assert_eq!(l.insert("b".into(), "2".into()), None);
        assert_eq!(l.insert("a".into(), "1".into()), None);
        assert_eq!(l.insert("b".into(), "3".into()).as_deref(), Some("2"));
        assert_eq!(format!("{l:?}"), r#"{"a": "1", "b": "3"}"#);
        assert_eq!(l.remove("a").as_deref(), Some("1"));
        assert_eq!(l.remove("a"), None);
        assert_eq!(format!("{l:?}"), r#"{"b": "3"}"#);
    }

    #[test]
    fn equal_pairs_are_one_allocation_and_freed_with_their_last_holder() {
        let key = "labels.test.gpufleet.io/shared";
        let a: Labels = [(key, "x")].into_iter().collect();
        let b: Labels = [(key, "x")].into_iter().collect();
        assert!(std::ptr::eq(a.0[0].as_ref(), b.0[0].as_ref()));
        assert_eq!(a.0[0].refcount(), 2);
        drop(a);
        assert_eq!(b.0[0].refcount(), 1);
    }

    #[test]
    fn a_stamp_keeps_every_instant_jiff_reads() {
        assert_eq!(std::mem::size_of::<Stamp>(), 12);
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-12-03T14:00:00.123456789Z",
            "1969-12-31T23:59:59.5Z",
            "9999-12-30T12:00:00.999999999Z",
            "-009999-01-03T00:00:00.000000001Z",
        ] {
            let t: Timestamp = text.parse().expect(text);
            assert_eq!(Stamp::from(t).get(), Some(t), "{text}");
            assert_eq!(Stamp::from(Some(t)), Some(t));
        }
        assert_eq!(Stamp::NONE.get(), None);
        assert_eq!(Stamp::default(), Stamp::from(None));
        assert_ne!(Stamp::NONE, Stamp::from(Timestamp::UNIX_EPOCH));
    }

    #[test]
    fn stamps_read_like_a_map() {
        let t = Timestamp::UNIX_EPOCH;
        let mut s: Stamps = [("Ready", t), ("A", t)].into_iter().collect();
        assert_eq!(s.get("Ready"), Some(&t));
        assert_eq!(s.insert("B".into(), t), None);
        assert_eq!(
            s.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["A", "B", "Ready"]
        );
    }
}
