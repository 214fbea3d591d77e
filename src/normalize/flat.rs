//! A scanner for flat JSON objects: every value a string, an integer, `true`,
//! `false`, `null` or a list of string pairs, written without whitespace.
//! That is the shape of the messages a venue sends most (Binance `bookTicker`
//! and `trade`: nine of ten lines of a capture) and of its depth messages,
//! whose levels are `[["price","size"],...]` (a depth diff carries dozens, a
//! snapshot thousands). Reading their fields straight from the bytes costs a
//! fraction of building a simd-json tape first.
//!
//! The scanner accepts a strict subset of JSON and nothing else: strings
//! without escapes or non-ASCII bytes, integers of up to 18 digits, no nesting
//! but the pair lists, no whitespace. Anything outside that subset is `None`,
//! and the caller parses the message with simd-json as it would have anyway,
//! so what a message means never depends on which path read it. One part of
//! the check is left to the caller: a pair list is only delimited by the scan,
//! and an object is flat once each of its lists has been read with
//! [`FlatObject::read_pairs`] or checked with [`FlatObject::check_pairs`].

use std::ops::Range;

use arrayvec::ArrayVec;

/// Fields kept per object; an object with more is left to the full parser.
const MAX_FIELDS: usize = 16;

/// One value of a flat object, as positions in the scanned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    /// A string's contents, without the quotes (ASCII, no escapes).
    Str(Range<usize>),
    /// A number's text.
    Number(Range<usize>),
    /// `true`, `false` or `null`.
    Literal,
    /// What looks like a list of two-string lists, `[["a","b"],...]` (empty
    /// too): the text from its `[` to its `]`. The scan only delimits it (a
    /// depth snapshot's lists run to hundreds of kilobytes, and reading them
    /// twice would cost as much as the rest of the message);
    /// [`FlatObject::read_pairs`] checks it as it reads it, and a message is
    /// flat only once every list in it has been read or checked
    /// ([`FlatObject::has_pair_lists`], [`FlatObject::check_pairs`]).
    Pairs(Range<usize>),
}

/// The fields of one flat object, in order. An `ArrayVec`, so that a new
/// one costs nothing: initialising an array of sixteen fields copied 640
/// bytes per message.
#[derive(Debug)]
pub(crate) struct FlatObject {
    fields: ArrayVec<(Range<usize>, Scalar), MAX_FIELDS>,
    /// For each key of one byte from `@` to DEL (every letter: most of the
    /// venues' keys are one), the index + 1 of the first field under it, or
    /// 0. A message's eight or so lookups would otherwise each walk the
    /// fields.
    first_of_letter: [u8; LETTERS],
}

/// The first byte [`FlatObject::first_of_letter`] covers, and how many.
const FIRST_LETTER: u8 = 0x40;
const LETTERS: usize = 64;

/// The place in [`FlatObject::first_of_letter`] of a key of one byte, if it
/// has one there.
fn letter_slot(letter: u8) -> Option<usize> {
    Some(usize::from(letter.checked_sub(FIRST_LETTER)?)).filter(|&slot| slot < LETTERS)
}

impl Default for FlatObject {
    fn default() -> Self {
        Self {
            fields: ArrayVec::new(),
            first_of_letter: [0; LETTERS],
        }
    }
}

impl FlatObject {
    /// The first value under `key` (as simd-json's `Object::get` finds it).
    pub(crate) fn get(&self, bytes: &[u8], key: &str) -> Option<&Scalar> {
        if let [letter] = key.as_bytes() {
            let slot = letter_slot(*letter).and_then(|at| self.first_of_letter.get(at));
            if let Some(&index) = slot {
                let field = usize::from(index).checked_sub(1)?;
                return self.fields.get(field).map(|(_, value)| value);
            }
        }
        // Keys are one or two letters: comparing bytes inline beats a call
        // to `memcmp` per key.
        let same = |name: &Range<usize>| {
            name.len() == key.len()
                && bytes
                    .get(name.clone())
                    .is_some_and(|name| name.iter().zip(key.bytes()).all(|(a, b)| *a == b))
        };
        self.fields
            .iter()
            .find(|(name, _)| same(name))
            .map(|(_, value)| value)
    }

    fn clear(&mut self) {
        self.fields.clear();
        self.first_of_letter = [0; LETTERS];
    }

    /// Adds a field; `None` past [`MAX_FIELDS`].
    fn push(&mut self, bytes: &[u8], key: Range<usize>, value: Scalar) -> Option<()> {
        if let Some([letter]) = bytes.get(key.clone()) {
            let number = u8::try_from(self.fields.len() + 1).ok()?;
            let slot = letter_slot(*letter).and_then(|at| self.first_of_letter.get_mut(at));
            if let Some(slot) = slot.filter(|slot| **slot == 0) {
                *slot = number;
            }
        }
        self.fields.try_push((key, value)).ok()
    }

    /// Reads the pair list under `key` with [`for_each_pair`], checking that
    /// it is one; `None` if it is not, or `read` or `pair` said so.
    pub(crate) fn read_pairs<T>(
        &self,
        bytes: &[u8],
        key: &str,
        read: impl Fn(&[u8], usize) -> Option<(T, usize)>,
        pair: impl FnMut(T, T) -> Option<()>,
    ) -> Option<()> {
        let Scalar::Pairs(range) = self.get(bytes, key)? else {
            return None;
        };
        read_list(bytes, range, read, pair)
    }

    /// Whether the object holds exactly `count` pair lists: those a caller
    /// read, and no other left unchecked.
    pub(crate) fn has_pair_lists(&self, count: usize) -> bool {
        let lists = self
            .values()
            .filter(|value| matches!(value, Scalar::Pairs(_)));
        lists.count() == count
    }

    /// Checks that every value delimited as a pair list is one.
    pub(crate) fn check_pairs(&self, bytes: &[u8]) -> Option<()> {
        self.values().try_for_each(|value| match value {
            Scalar::Pairs(range) => read_list(bytes, range, scan_string, |_, _| Some(())),
            _ => Some(()),
        })
    }

    fn values(&self) -> impl Iterator<Item = &Scalar> {
        self.fields.iter().map(|(_, value)| value)
    }
}

/// Reads the pair list the scan delimited as `range`: it is one only if
/// reading it ends where the scan did.
fn read_list<T>(
    bytes: &[u8],
    range: &Range<usize>,
    read: impl Fn(&[u8], usize) -> Option<(T, usize)>,
    pair: impl FnMut(T, T) -> Option<()>,
) -> Option<()> {
    (for_each_pair(bytes, range.start, read, pair)? == range.end).then_some(())
}

/// Where the first `]]` is: the end of a pair list unless its strings hold
/// one, which reading the list then finds.
static LIST_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"]]"));

/// Scans the flat object that starts at `at`: the object and the index just
/// past its closing brace, or `None` if it is not a flat object.
/// `object` is overwritten (it is large enough that returning it would cost a
/// copy per message).
pub(crate) fn scan_object(bytes: &[u8], mut at: usize, object: &mut FlatObject) -> Option<usize> {
    object.clear();
    at = expect(bytes, at, b'{')?;
    if bytes.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        let (key, after_key) = scan_string(bytes, at)?;
        at = expect(bytes, after_key, b':')?;
        let (value, after_value) = scan_scalar(bytes, at)?;
        object.push(bytes, key, value)?;
        match bytes.get(after_value)? {
            b',' => at = after_value + 1,
            b'}' => return Some(after_value + 1),
            _ => return None,
        }
    }
}

/// The contents of the string that starts at `at` (its opening quote) and
/// the index past its closing quote.
pub(crate) fn scan_string(bytes: &[u8], at: usize) -> Option<(Range<usize>, usize)> {
    let start = expect(bytes, at, b'"')?;
    // Venue strings are short: one pass, no search set-up. Escapes, control
    // characters and non-ASCII text are the full parser's.
    let length = bytes
        .get(start..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))?;
    let end = start + length;
    (bytes[end] == b'"').then_some((start..end, end + 1))
}

fn scan_scalar(bytes: &[u8], at: usize) -> Option<(Scalar, usize)> {
    match bytes.get(at)? {
        b'"' => scan_string(bytes, at).map(|(contents, end)| (Scalar::Str(contents), end)),
        b'[' => {
            let end = match bytes.get(at + 1)? {
                b']' => at + 2,
                b'[' => at + LIST_END.find(bytes.get(at..)?)? + 2,
                _ => return None,
            };
            Some((Scalar::Pairs(at..end), end))
        }
        b't' | b'f' | b'n' => ["true", "false", "null"].iter().find_map(|word| {
            let end = at + word.len();
            (bytes.get(at..end) == Some(word.as_bytes())).then_some((Scalar::Literal, end))
        }),
        _ => scan_number(bytes, at).map(|end| (Scalar::Number(at..end), end)),
    }
}

/// The end of the integer at `at`: `-?(0|[1-9][0-9]*)`, at most
/// [`MAX_DIGITS`] digits. The numbers venues send in these messages are ids
/// and times; fractions and exponents are left to the full parser, since
/// simd-json refuses some that JSON's grammar allows (an exponent past its
/// range), and an integer of this size is one it always takes.
fn scan_number(bytes: &[u8], mut at: usize) -> Option<usize> {
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    let digits = match bytes.get(at)? {
        b'0' => 1,
        b'1'..=b'9' => bytes
            .get(at..)?
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count(),
        _ => return None,
    };
    (digits <= MAX_DIGITS).then_some(at + digits)
}

/// The longest integer the scanner takes: any 18 digits fit an `i64`.
const MAX_DIGITS: usize = 18;

/// Reads the list of string pairs that starts at `at` (its `[`), each
/// string read by `read` (given the index of its opening quote: the value it
/// holds and the index past its closing quote, or `None` if it is not a
/// string `read` takes; [`scan_string`] takes any), and calls `pair` with each
/// pair's two values in order. Returns the index past the list's `]`, or
/// `None` if the text is not such a list or `read` or `pair` said so. A
/// reader that decodes as it scans reads each string once.
pub(crate) fn for_each_pair<T>(
    bytes: &[u8],
    at: usize,
    read: impl Fn(&[u8], usize) -> Option<(T, usize)>,
    mut pair: impl FnMut(T, T) -> Option<()>,
) -> Option<usize> {
    let mut at = expect(bytes, at, b'[')?;
    if bytes.get(at) == Some(&b']') {
        return Some(at + 1);
    }
    loop {
        let (first, after) = read(bytes, expect(bytes, at, b'[')?)?;
        let (second, after) = read(bytes, expect(bytes, after, b',')?)?;
        pair(first, second)?;
        at = expect(bytes, after, b']')?;
        match bytes.get(at)? {
            b',' => at += 1,
            b']' => return Some(at + 1),
            _ => return None,
        }
    }
}

/// The index past `byte` at `at`, if it is there.
pub(crate) fn expect(bytes: &[u8], at: usize, byte: u8) -> Option<usize> {
    (bytes.get(at) == Some(&byte)).then_some(at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Option<Vec<(String, Scalar)>> {
        let bytes = text.as_bytes();
        let mut object = FlatObject::default();
        let end = scan_object(bytes, 0, &mut object)?;
        assert_eq!(end, bytes.len(), "{text}");
        Some(
            object
                .fields
                .iter()
                .map(|(key, value)| (text[key.clone()].to_owned(), value.clone()))
                .collect(),
        )
    }

    #[test]
    fn flat_objects_are_read_field_by_field() {
        let text = r#"{"e":"trade","E":1723161256322,"p":"61800.30","m":false,"x":null,"f":-123456789012345678}"#;
        let read = fields(text).expect("flat");
        let keys: Vec<&str> = read.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["e", "E", "p", "m", "x", "f"]);
        let price = text.find("61800.30").expect("in the text");
        assert_eq!(read[2].1, Scalar::Str(price..price + 8));
        assert_eq!(read[3].1, Scalar::Literal);
        assert!(
            matches!(&read[5].1, Scalar::Number(r) if &text[r.clone()] == "-123456789012345678")
        );
        assert_eq!(fields("{}"), Some(Vec::new()));
    }

    #[test]
    fn a_key_finds_its_first_field_whatever_its_length() {
        let text = r#"{"a":"1","a":"2","~":"3","0":"4","ab":"5","@":"6","b":7}"#;
        let bytes = text.as_bytes();
        let mut object = FlatObject::default();
        scan_object(bytes, 0, &mut object).expect("flat");
        let get = |key: &str| match object.get(bytes, key) {
            Some(Scalar::Str(range)) => Some(text[range.clone()].to_owned()),
            Some(Scalar::Number(range)) => Some(text[range.clone()].to_owned()),
            Some(other) => panic!("{key}: {other:?}"),
            None => None,
        };
        let found: Vec<Option<String>> = ["a", "~", "0", "ab", "@", "b", "c", "A", "abc"]
            .iter()
            .map(|key| get(key))
            .collect();
        let want = [
            Some("1"),
            Some("3"),
            Some("4"),
            Some("5"),
            Some("6"),
            Some("7"),
        ]
        .into_iter()
        .chain([None, None, None])
        .map(|value| value.map(str::to_owned))
        .collect::<Vec<_>>();
        assert_eq!(found, want);
        // Scanning the next object forgets this one's keys.
        scan_object(br#"{"c":"8"}"#, 0, &mut object).expect("flat");
        assert!(object.get(br#"{"c":"8"}"#, "a").is_none());
        assert!(object.get(br#"{"c":"8"}"#, "c").is_some());
    }

    #[test]
    fn pair_lists_are_read_pair_by_pair() {
        let text = r#"{"b":[["61800.20","2.909"],["1",""]],"a":[],"s":"X"}"#;
        let read = fields(text).expect("flat");
        let Scalar::Pairs(levels) = &read[0].1 else {
            panic!("pairs expected: {read:?}");
        };
        assert_eq!(&text[levels.clone()], r#"[["61800.20","2.909"],["1",""]]"#);
        assert!(matches!(&read[1].1, Scalar::Pairs(r) if &text[r.clone()] == "[]"));
        let mut pairs = Vec::new();
        let end = for_each_pair(text.as_bytes(), levels.start, scan_string, |a, b| {
            pairs.push((text.as_bytes()[a].to_vec(), text.as_bytes()[b].to_vec()));
            Some(())
        });
        assert_eq!(end, Some(levels.end));
        let expected: [(&[u8], &[u8]); 2] = [(b"61800.20", b"2.909"), (b"1", b"")];
        assert_eq!(pairs, expected.map(|(a, b)| (a.to_vec(), b.to_vec())));
        let mut object = FlatObject::default();
        scan_object(text.as_bytes(), 0, &mut object).expect("flat");
        assert!(object.has_pair_lists(2));
        assert_eq!(object.check_pairs(text.as_bytes()), Some(()));
        let mut read = 0;
        let all = object.read_pairs(text.as_bytes(), "b", scan_string, |_, _| {
            read += 1;
            Some(())
        });
        assert_eq!((all, read), (Some(()), 2));
        assert_eq!(
            object.read_pairs(text.as_bytes(), "s", scan_string, |_, _| Some(())),
            None
        );
        // The reader stops where the caller does.
        let mut calls = 0;
        let stopped = for_each_pair(text.as_bytes(), levels.start, scan_string, |_, _| {
            calls += 1;
            None
        });
        assert_eq!((stopped, calls), (None, 1));
    }

    #[test]
    fn everything_outside_the_subset_is_left_to_the_full_parser() {
        for text in [
            r#"{"a":"x\"y"}"#,                 // an escape
            r#"{"a":"café"}"#,                 // non-ASCII
            "{\"a\":\"\t\"}",                  // a control character
            r#"{"a": 1}"#,                     // whitespace
            r#"{"a":[1]}"#,                    // nesting
            r#"{"a":[["1"]]}"#,                // a list of one string
            r#"{"a":[["1","2","3"]]}"#,        // a list of three
            r#"{"a":[["1",2]]}"#,              // a number in a pair
            r#"{"a":[["1","2"],]}"#,           // a trailing comma in the list
            r#"{"a":[["1","2"]}"#,             // an unclosed list
            r#"{"a":[[]]}"#,                   // an empty pair
            r#"{"a":[["1","2"] ]}"#,           // whitespace in the list
            r#"{"a":{"b":1}}"#,                // nesting
            r#"{"a":01}"#,                     // a leading zero
            r#"{"a":1.}"#,                     // no fraction digits
            r#"{"a":0.5}"#,                    // a fraction
            r#"{"a":5e3}"#,                    // an exponent
            r#"{"a":512E3108592166}"#,         // an exponent simd-json refuses
            r#"{"a":1234567890123456789}"#,    // 19 digits
            r#"{"a":1e}"#,                     // no exponent digits
            r#"{"a":-}"#,                      // no digits
            r#"{"a":tru}"#,                    // a cut literal
            r#"{"a":1,}"#,                     // a trailing comma
            r#"{"a":1"#,                       // unterminated
            r#"{"a" :1}"#,                     // space before the colon
            r#"{a:1}"#,                        // a bare key
            r#"{"a":[["1","]]"],["2","3"]]}"#, // a list end in a string
        ] {
            let mut object = FlatObject::default();
            let flat = scan_object(text.as_bytes(), 0, &mut object)
                .and_then(|_| object.check_pairs(text.as_bytes()));
            assert!(flat.is_none(), "{text}");
        }
        let many: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!("{{{}}}", many.join(","));
        let mut object = FlatObject::default();
        assert!(
            scan_object(text.as_bytes(), 0, &mut object).is_none(),
            "more fields than kept"
        );
    }
}
