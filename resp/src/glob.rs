//! Redis's glob patterns (`KEYS`, `SCAN ... MATCH`, `PSUBSCRIBE`): `*`, `?`, `[abc]`, `[^a-z]`
//! and `\` escapes, matched in time linear in the key times the pattern (Redis recurses on
//! every `*`; a pattern of many stars cannot make this one slow).

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Any,
    One,
    Byte(u8),
    Class { negated: bool, items: Vec<(u8, u8)> },
}

impl Token {
    fn matches(&self, b: u8) -> bool {
        match self {
            Token::One => true,
            Token::Byte(want) => *want == b,
            Token::Class { negated, items } => items.iter().any(|&(low, high)| low <= b && b <= high) != *negated,
            Token::Any => false,
        }
    }
}

/// A compiled pattern.
#[derive(Clone, Debug)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Glob {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                b'*' => {
                    if tokens.last() != Some(&Token::Any) {
                        tokens.push(Token::Any);
                    }
                }
                b'?' => tokens.push(Token::One),
                b'\\' if i + 1 < pattern.len() => {
                    i += 1;
                    tokens.push(Token::Byte(pattern[i]));
                }
                b'[' => {
                    i += 1;
                    let negated = pattern.get(i) == Some(&b'^');
                    if negated {
                        i += 1;
                    }
                    let mut items = Vec::new();
                    // As Redis: the class ends at `]` or at the pattern's end.
                    while i < pattern.len() && pattern[i] != b']' {
                        if pattern[i] == b'\\' && i + 1 < pattern.len() {
                            i += 1;
                            items.push((pattern[i], pattern[i]));
                        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
                            let (a, b) = (pattern[i], pattern[i + 2]);
                            items.push((a.min(b), a.max(b)));
                            i += 2;
                        } else {
                            items.push((pattern[i], pattern[i]));
                        }
                        i += 1;
                    }
                    tokens.push(Token::Class { negated, items });
                }
                other => tokens.push(Token::Byte(other)),
            }
            i += 1;
        }
        Glob { tokens }
    }

    /// The bytes every match starts with: a scan need only read keys under them.
    pub fn literal_prefix(&self) -> Vec<u8> {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect()
    }

    /// Whether the pattern is `*`: every key matches.
    pub fn matches_everything(&self) -> bool {
        self.tokens == [Token::Any]
    }

    /// Whether `text` matches the whole pattern. Greedy with one resume point (the last `*`):
    /// every token but `*` takes exactly one byte, so that is enough.
    pub fn matches(&self, text: &[u8]) -> bool {
        let (mut t, mut p) = (0usize, 0usize);
        let mut resume: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Any) => {
                    resume = Some((p, t));
                    p += 1;
                }
                Some(token) if token.matches(text[t]) => {
                    t += 1;
                    p += 1;
                }
                _ => match resume {
                    Some((star, from)) => {
                        p = star + 1;
                        t = from + 1;
                        resume = Some((star, from + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern.as_bytes()).matches(text.as_bytes())
    }

    #[test]
    fn patterns_as_redis_documents_them() {
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello") && !m("h*llo", "hellox"));
        assert!(m("h[ae]llo", "hello") && m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hallo") && m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h\\*llo", "h*llo") && !m("h\\*llo", "hello"));
        assert!(m("*", "") && m("*", "anything") && m("", "") && !m("", "x"));
        assert!(m("user:*:name", "user:42:name") && !m("user:*:name", "user:42:age"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx") && !m("*a*b*c*", "xxcxxbxxaxx"));
    }

    #[test]
    fn the_literal_prefix_bounds_a_scan() {
        assert_eq!(Glob::new(b"user:*").literal_prefix(), b"user:");
        assert_eq!(Glob::new(b"a\\*b*").literal_prefix(), b"a*b");
        assert!(Glob::new(b"*").matches_everything());
        assert!(Glob::new(b"**").matches_everything());
    }

    /// A plain recursive matcher, exponential but obviously right, as the oracle.
    fn reference(tokens: &[Token], text: &[u8]) -> bool {
        match tokens.split_first() {
            None => text.is_empty(),
            Some((Token::Any, rest)) => (0..=text.len()).any(|skip| reference(rest, &text[skip..])),
            Some((token, rest)) => text
                .split_first()
                .is_some_and(|(b, tail)| token.matches(*b) && reference(rest, tail)),
        }
    }

    proptest! {
        #[test]
        fn the_matcher_agrees_with_the_recursive_reference(
            pattern in "[ab*?\\[\\]^\\\\-]{0,8}",
            text in "[ab*-]{0,10}",
        ) {
            let glob = Glob::new(pattern.as_bytes());
            prop_assert_eq!(glob.matches(text.as_bytes()), reference(&glob.tokens, text.as_bytes()));
            let prefix = glob.literal_prefix();
            if glob.matches(text.as_bytes()) {
                prop_assert!(text.as_bytes().starts_with(&prefix));
            }
        }
    }
}
