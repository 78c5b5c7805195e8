//! Seeded mutations of corpus entries, for the stable driver: a mutation fuzzer, not a
//! coverage-guided one (it keeps no new inputs; `make fuzz` runs libFuzzer for that).
//!
//! Each new input is a corpus entry with 1 to 6 stacked mutations: bit flips, random or
//! interesting bytes, interesting 16/32/64-bit integers (both byte orders), Avro zig-zag varints
//! (lengths and counts: 0, ±1, huge, negative, overlong encodings), inserted, deleted, duplicated
//! or truncated ranges, splices with another corpus entry, and tokens of the target's
//! dictionary (the libFuzzer `.dict` files in `fuzz/dicts/`). The same seed gives the same
//! inputs, so a run is reproducible from its seed alone. Inputs never exceed `max_len` bytes.

/// splitmix64: small, fast, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

const INTERESTING_8: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0x0a, 0x0d, b'"', b'<', b'{', b'_'];
const INTERESTING_64: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Avro zig-zag varint of `v`.
pub fn varint(v: i64) -> Vec<u8> {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::with_capacity(10);
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Produces mutated inputs from a corpus.
#[derive(Debug)]
pub struct Mutator<'a> {
    corpus: &'a [Vec<u8>],
    dict: &'a [Vec<u8>],
    max_len: usize,
    rng: Rng,
}

impl<'a> Mutator<'a> {
    /// A mutator over `corpus` (at least one entry; an empty input stands in otherwise) with
    /// dictionary tokens `dict`.
    pub fn new(corpus: &'a [Vec<u8>], dict: &'a [Vec<u8>], max_len: usize, seed: u64) -> Self {
        Mutator {
            corpus,
            dict,
            max_len: max_len.max(1),
            rng: Rng::new(seed),
        }
    }

    /// The next input, written into `out`.
    pub fn next_into(&mut self, out: &mut Vec<u8>) {
        out.clear();
        if !self.corpus.is_empty() {
            let base = &self.corpus[self.rng.below(self.corpus.len())];
            out.extend_from_slice(&base[..base.len().min(self.max_len)]);
        }
        let n = 1 + self.rng.below(6);
        for _ in 0..n {
            self.mutate(out);
        }
        out.truncate(self.max_len);
    }

    fn pos(&mut self, buf: &[u8]) -> usize {
        self.rng.below(buf.len() + 1)
    }

    fn mutate(&mut self, buf: &mut Vec<u8>) {
        let rng = &mut self.rng;
        match rng.below(13) {
            0 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] ^= 1 << rng.below(8);
            }
            1 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = rng.next_u64() as u8;
            }
            2 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = INTERESTING_8[rng.below(INTERESTING_8.len())];
            }
            3 => {
                // An interesting integer over existing bytes (or appended), either byte order.
                let v = INTERESTING_64[rng.below(INTERESTING_64.len())];
                let width = [2usize, 4, 8][rng.below(3)];
                let bytes = if rng.one_in(2) {
                    v.to_le_bytes()[..width].to_vec()
                } else {
                    v.to_be_bytes()[8 - width..].to_vec()
                };
                let at = self.pos(buf);
                overwrite(buf, at, &bytes);
            }
            4 => {
                // An Avro varint: a length, count, union index or enum index.
                let v = match self.rng.below(6) {
                    0 => self.rng.below(4) as i64 - 1,
                    1 => -(self.rng.below(1 << 20) as i64) - 1,
                    2 => self.rng.below(1 << 16) as i64,
                    3 => i64::MAX - self.rng.below(4) as i64,
                    4 => i64::MIN + self.rng.below(4) as i64,
                    _ => self.rng.next_u64() as i64,
                };
                let mut bytes = varint(v);
                if self.rng.one_in(4) {
                    // Overlong: a redundant continuation byte.
                    if let Some(last) = bytes.last_mut() {
                        *last |= 0x80;
                    }
                    bytes.push(0);
                }
                let at = self.pos(buf);
                if self.rng.one_in(2) {
                    overwrite(buf, at, &bytes);
                } else {
                    insert(buf, at, &bytes);
                }
            }
            5 => {
                let at = self.pos(buf);
                let n = 1 + self.rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
                insert(buf, at, &bytes);
            }
            6 if !buf.is_empty() => {
                let at = self.rng.below(buf.len());
                let n = 1 + self.rng.below((buf.len() - at).min(64));
                buf.drain(at..at + n);
            }
            7 if !buf.is_empty() => {
                // Duplicate a range in place (repeated elements, records, lines).
                let at = self.rng.below(buf.len());
                let n = 1 + self.rng.below((buf.len() - at).min(256));
                let copy = buf[at..at + n].to_vec();
                let to = self.pos(buf);
                insert(buf, to, &copy);
            }
            8 => {
                let at = self.pos(buf);
                buf.truncate(at);
            }
            9 if !self.corpus.is_empty() => {
                // Splice: our head, another entry's tail.
                let other = &self.corpus[self.rng.below(self.corpus.len())];
                let at = self.pos(buf);
                let from = self.rng.below(other.len() + 1);
                buf.truncate(at);
                buf.extend_from_slice(&other[from..]);
            }
            10 | 11 if !self.dict.is_empty() => {
                let token = &self.dict[self.rng.below(self.dict.len())];
                let at = self.pos(buf);
                if self.rng.one_in(2) {
                    insert(buf, at, token);
                } else {
                    overwrite(buf, at, token);
                }
            }
            _ if buf.len() >= 2 => {
                // Swap two bytes.
                let (i, j) = (self.rng.below(buf.len()), self.rng.below(buf.len()));
                buf.swap(i, j);
            }
            _ => buf.push(self.rng.next_u64() as u8),
        }
        buf.truncate(self.max_len);
    }
}

fn overwrite(buf: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let end = at + bytes.len();
    if end > buf.len() {
        buf.resize(end, 0);
    }
    buf[at..end].copy_from_slice(bytes);
}

fn insert(buf: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    buf.splice(at..at, bytes.iter().copied());
}

/// Parses a libFuzzer dictionary: one `"token"` a line (optionally `name="token"`), with `\\`,
/// `\"` and `\xNN` escapes; comments and blank lines ignored.
pub fn parse_dict(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (Some(start), Some(end)) = (l.find('"'), l.rfind('"')) else {
            continue;
        };
        if end <= start {
            continue;
        }
        let body = &l.as_bytes()[start + 1..end];
        let mut token = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            match (body[i], body.get(i + 1)) {
                (b'\\', Some(b'x')) => {
                    let hex = body
                        .get(i + 2..i + 4)
                        .and_then(|h| std::str::from_utf8(h).ok());
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            token.push(b);
                            i += 4;
                        }
                        None => {
                            token.push(b'\\');
                            i += 1;
                        }
                    }
                }
                (b'\\', Some(&c)) => {
                    token.push(c);
                    i += 2;
                }
                (c, _) => {
                    token.push(c);
                    i += 1;
                }
            }
        }
        if !token.is_empty() {
            out.push(token);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_avro_zigzag() {
        assert_eq!(varint(0), [0]);
        assert_eq!(varint(-1), [1]);
        assert_eq!(varint(1), [2]);
        assert_eq!(varint(64), [0x80, 0x01]);
        assert_eq!(varint(i64::MIN).len(), 10);
    }

    #[test]
    fn mutations_are_reproducible_and_bounded() {
        let corpus = vec![b"hello world".to_vec(), vec![0xc3, 0x01, 0, 0]];
        let dict = parse_dict("# c\n\"<Read\"\nkw=\"\\x00\\\"\"\n");
        assert_eq!(dict, [b"<Read".to_vec(), vec![0, b'"']]);
        let run = |seed| {
            let mut m = Mutator::new(&corpus, &dict, 32, seed);
            let mut buf = Vec::new();
            (0..200)
                .map(|_| {
                    m.next_into(&mut buf);
                    assert!(buf.len() <= 32);
                    buf.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
