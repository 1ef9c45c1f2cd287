// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The case of each header name of a head, kept beside the head's map of values.

use crate::case_header_name::CaseHeaderName;
use http::header::HeaderName;

/// The case each header of a head was given, one name per value, in the order in which
/// [`http::HeaderMap::iter`] visits the values of the map it is kept beside.
///
/// `http`'s `HeaderMap` keeps one entry per name in a vector, in the order the names were
/// first added, with the later values of a name chained after its entry; `iter()` walks the
/// vector and each entry's chain. Every change the head makes to its map of values is made
/// here in the same way, so both are walked together:
/// - a value of a name not in the map goes last (a new entry is pushed);
/// - a value appended to a name in the map goes right after that name's last value (the tail
///   of its chain);
/// - an insert over a name in the map takes its first value's place and drops the others (the
///   entry's value is replaced and its chain removed);
/// - removing a name drops its values and moves the values of the last name into their place
///   (the entry is `swap_remove`d).
///
/// A vector of names takes no hashing to add to, where a second `HeaderMap` of names hashed and
/// probed on every header of every head read, and an insert into a present name or a removal
/// only walks the names, which a head has few of. The test `names_follow_the_values_through_any_changes`
/// checks the order against `HeaderMap`'s own through random changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct CaseMap(Vec<CaseHeaderName>);

/// Whether `case` is `name` in some case. `name` is lower case, as a [`HeaderName`] is.
#[inline]
fn is_name(case: &CaseHeaderName, name: &[u8]) -> bool {
    let case = case.as_slice();
    case.len() == name.len() && lowers_to(case, name)
}

/// `x` with its ASCII upper-case letters in lower case, eight bytes at once.
#[inline]
fn to_lower_word(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Each byte's low seven bits plus a constant below 0x80 cannot carry into the next byte.
    let low = x & !HIGH;
    let from_a = low + ONES * (0x80 - b'A' as u64); // high bit set where low >= 'A'
    let past_z = low + ONES * (0x80 - b'Z' as u64 - 1); // high bit set where low > 'Z'
    let upper = from_a & !past_z & !x & HIGH; // 'A'..='Z', and not a byte >= 0x80
    x | (upper >> 2) // 0x80 >> 2 is the case bit, 0x20
}

/// Whether `bytes` in lower case is `lower`; both are as long.
#[inline]
fn lowers_to(bytes: &[u8], lower: &[u8]) -> bool {
    let mut a = bytes.chunks_exact(8);
    let mut b = lower.chunks_exact(8);
    for (x, y) in (&mut a).zip(&mut b) {
        let x = u64::from_ne_bytes(x.try_into().expect("eight bytes"));
        let y = u64::from_ne_bytes(y.try_into().expect("eight bytes"));
        if to_lower_word(x) != y {
            return false;
        }
    }
    a.remainder()
        .iter()
        .zip(b.remainder())
        .all(|(x, y)| x.to_ascii_lowercase() == *y)
}

impl CaseMap {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        CaseMap(Vec::with_capacity(capacity))
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity()
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional)
    }

    /// The names, in the order the values map visits its values.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, CaseHeaderName> {
        self.0.iter()
    }

    /// The place of the first value of `name` and the number of its values.
    fn find(&self, name: &[u8]) -> Option<(usize, usize)> {
        let start = self.0.iter().position(|case| is_name(case, name))?;
        let count = self.0[start..]
            .iter()
            .take_while(|case| is_name(case, name))
            .count();
        Some((start, count))
    }

    /// Follow `HeaderMap::append(name, ..)`, which said whether `name` was `present` before.
    pub(crate) fn appended(&mut self, name: &HeaderName, case: CaseHeaderName, present: bool) {
        if present {
            if let Some((start, count)) = self.find(name.as_str().as_bytes()) {
                self.0.insert(start + count, case);
                return;
            }
        }
        self.0.push(case);
    }

    /// Follow `HeaderMap::insert(name, ..)`, which said whether `name` was `present` before.
    pub(crate) fn inserted(&mut self, name: &HeaderName, case: CaseHeaderName, present: bool) {
        if present {
            if let Some((start, count)) = self.find(name.as_str().as_bytes()) {
                self.0[start] = case;
                if count > 1 {
                    self.0.drain(start + 1..start + count);
                }
                return;
            }
        }
        self.0.push(case);
    }

    /// Follow `HeaderMap::remove(name)` of a name that was present.
    pub(crate) fn removed(&mut self, name: &HeaderName) {
        let Some((start, count)) = self.find(name.as_str().as_bytes()) else {
            return;
        };
        self.0.drain(start..start + count);
        // The values of the map's last name (a run at the end) move into the place, unless
        // the name removed was the last.
        if let Some(last) = self.0.last() {
            if start < self.0.len() {
                let last = last.as_slice();
                let run = self.0[start..]
                    .iter()
                    .rev()
                    .take_while(|case| {
                        let case = case.as_slice();
                        case.len() == last.len() && case.eq_ignore_ascii_case(last)
                    })
                    .count();
                self.0[start..].rotate_right(run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lowers_to;
    use crate::{RequestHeader, ResponseHeader};

    /// A small generator, so the test needs no crate and every run is the same.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    const NAMES: [&str; 8] = [
        "Host",
        "X-Forwarded-For",
        "x-forwarded-for",
        "Content-Length",
        "CONNECTION",
        "X-Trace",
        "x-tRACE",
        "Set-Cookie",
    ];

    fn check(wire_names: Vec<(String, String)>, values: Vec<(String, String)>) {
        assert_eq!(wire_names.len(), values.len());
        for ((case, v1), (name, v2)) in wire_names.iter().zip(values.iter()) {
            assert!(case.eq_ignore_ascii_case(name), "{case} written for {name}");
            assert_eq!(v1, v2);
        }
    }

    #[test]
    fn names_follow_the_values_through_any_changes() {
        for seed in 0..300 {
            let mut rng = Lcg(seed);
            let mut req = RequestHeader::build("GET", b"/", Some(rng.below(4))).unwrap();
            let mut resp = ResponseHeader::build(200, Some(rng.below(4))).unwrap();
            for step in 0..40 {
                let name = NAMES[rng.below(NAMES.len())];
                let value = format!("v{step}");
                match rng.below(6) {
                    0 | 1 => {
                        req.append_header(name.to_string(), &value).unwrap();
                        resp.append_header(name.to_string(), &value).unwrap();
                    }
                    2 | 3 => {
                        req.insert_header(name.to_string(), &value).unwrap();
                        resp.insert_header(name.to_string(), &value).unwrap();
                    }
                    4 => {
                        req.remove_header(name);
                        resp.remove_header(name);
                    }
                    _ => {
                        req = req.clone();
                        resp.reserve(rng.below(3)).unwrap();
                    }
                }
                let pairs = |it: &mut dyn Iterator<Item = (String, String)>| it.collect::<Vec<_>>();
                check(
                    pairs(&mut req.case_header_iter().map(|(c, v)| {
                        (
                            String::from_utf8(c.as_slice().to_vec()).unwrap(),
                            v.to_str().unwrap().to_string(),
                        )
                    })),
                    pairs(
                        &mut req
                            .headers
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string())),
                    ),
                );
                check(
                    pairs(&mut resp.case_header_iter().map(|(c, v)| {
                        (
                            String::from_utf8(c.as_slice().to_vec()).unwrap(),
                            v.to_str().unwrap().to_string(),
                        )
                    })),
                    pairs(
                        &mut resp
                            .headers
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string())),
                    ),
                );
            }
        }
    }

    #[test]
    fn a_name_lowers_to_its_lower_case_and_to_nothing_else() {
        for x in 0..=255u8 {
            for y in 0..=255u8 {
                let word = [x, y, x, y, y, x, y, x];
                let lower: Vec<u8> = word.iter().map(|b| b.to_ascii_lowercase()).collect();
                assert!(lowers_to(&word, &lower), "{word:?}");
                let other = [y, y, y, y, x, x, x, x];
                assert_eq!(
                    lowers_to(&word, &other),
                    word.to_ascii_lowercase() == other,
                    "{word:?} {other:?}"
                );
            }
        }
        for name in [
            "x-Forwarded-FOR",
            "Content-Length",
            "DATE",
            "Set-Cookie",
            "x^y",
            "x~y",
        ] {
            let lower = name.to_ascii_lowercase();
            assert!(lowers_to(name.as_bytes(), lower.as_bytes()));
        }
        assert!(!lowers_to(b"x^y", b"x~y"));
        assert!(!lowers_to(b"x-forwarded-fos", b"x-forwarded-for"));
        assert!(!lowers_to(b"X-FORWARDED-FOR", b"x-forwarded-fos"));
        assert!(!lowers_to(b"@", b"`"));
        assert!(!lowers_to(b"[", b"{"));
    }

    #[test]
    fn each_value_keeps_the_case_it_was_given() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("X-Trace", "1").unwrap();
        resp.append_header("Server", "a").unwrap();
        resp.append_header("x-TRACE", "2").unwrap();
        resp.append_header("Vary", "b").unwrap();
        resp.remove_header("server");
        resp.insert_header("DATE", "d").unwrap();
        resp.append_header("X-TRACE", "3").unwrap();
        let mut wire = vec![];
        resp.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "X-Trace: 1\r\nx-TRACE: 2\r\nX-TRACE: 3\r\nVary: b\r\nDATE: d\r\n"
        );
        resp.insert_header("x-trace", "4").unwrap();
        let mut wire = vec![];
        resp.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "x-trace: 4\r\nVary: b\r\nDATE: d\r\n"
        );
    }
}
