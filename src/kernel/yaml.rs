//! libyaml's scanner (through `unsafe-libyaml`, the one serde_yaml parses with) as a
//! safe iterator of tokens. It lives in this layer because this layer holds loopgate's
//! foreign-function code: `policy` counts nesting depth on these tokens.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use unsafe_libyaml as unsafe_y;

/// What a token does to the nesting depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    /// A flow or block sequence or mapping starts.
    Open,
    /// A flow sequence or mapping, or a block collection, ends.
    Close,
    /// The input ends.
    End,
    /// Any other token.
    Other,
}

/// One token: what it does to the nesting, and its line (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// What the token does to the nesting depth.
    pub nesting: Nesting,
    /// The line it starts on, counted from 0.
    pub line: u64,
}

/// libyaml's scanner over `text`; it yields tokens up to and including the one that
/// ends the input, or until a token does not scan (the parser then reports that
/// error), and nothing after.
pub struct Scanner<'a> {
    parser: Box<MaybeUninit<unsafe_y::yaml_parser_t>>,
    /// The end of the input was yielded: libyaml would answer "no token" for ever.
    ended: bool,
    text: PhantomData<&'a str>,
}

impl Drop for Scanner<'_> {
    fn drop(&mut self) {
        // SAFETY: only ever built after yaml_parser_initialize succeeded on it.
        unsafe { unsafe_y::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

impl<'a> Scanner<'a> {
    /// A scanner of `text`; `None` when libyaml has no memory for one.
    pub fn new(text: &'a str) -> Option<Scanner<'a>> {
        let mut parser = Box::new(MaybeUninit::<unsafe_y::yaml_parser_t>::zeroed());
        // SAFETY: the parser is boxed (it must not move once initialised); initialise
        // cannot fail in unsafe-libyaml (its allocations abort when memory runs out),
        // and were it to, the parser is not wrapped, so never deleted. The input
        // is `text`, borrowed for `'a`, which the scanner's lifetime is bound to, so it
        // outlives every read; the scanner reads at most `text.len()` bytes of it.
        unsafe {
            if unsafe_y::yaml_parser_initialize(parser.as_mut_ptr()).fail {
                return None;
            }
            unsafe_y::yaml_parser_set_input_string(
                parser.as_mut_ptr(),
                text.as_ptr(),
                text.len() as _,
            );
        }
        Some(Scanner {
            parser,
            ended: false,
            text: PhantomData,
        })
    }
}

impl Iterator for Scanner<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        if self.ended {
            return None;
        }
        let mut token = MaybeUninit::<unsafe_y::yaml_token_t>::zeroed();
        // SAFETY: the parser was initialised in `new`; `token` is written by the scan
        // when it succeeds, read only then, and deleted once, after its fields are
        // copied out.
        let (kind, line) = unsafe {
            if unsafe_y::yaml_parser_scan(self.parser.as_mut_ptr(), token.as_mut_ptr()).fail {
                return None;
            }
            let t = &*token.as_ptr();
            let read = (t.type_, t.start_mark.line);
            unsafe_y::yaml_token_delete(token.as_mut_ptr());
            read
        };
        let nesting = match kind {
            unsafe_y::YAML_STREAM_END_TOKEN | unsafe_y::YAML_NO_TOKEN => Nesting::End,
            unsafe_y::YAML_FLOW_SEQUENCE_START_TOKEN
            | unsafe_y::YAML_FLOW_MAPPING_START_TOKEN
            | unsafe_y::YAML_BLOCK_SEQUENCE_START_TOKEN
            | unsafe_y::YAML_BLOCK_MAPPING_START_TOKEN => Nesting::Open,
            unsafe_y::YAML_FLOW_SEQUENCE_END_TOKEN
            | unsafe_y::YAML_FLOW_MAPPING_END_TOKEN
            | unsafe_y::YAML_BLOCK_END_TOKEN => Nesting::Close,
            _ => Nesting::Other,
        };
        self.ended = nesting == Nesting::End;
        Some(Token { nesting, line })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deepest nesting the scanner's tokens reach (Open +1, Close -1).
    fn depth(text: &str) -> (i64, usize) {
        let (mut d, mut max, mut n) = (0i64, 0i64, 0usize);
        for t in Scanner::new(text).unwrap() {
            n += 1;
            match t.nesting {
                Nesting::Open => d += 1,
                Nesting::Close => d -= 1,
                Nesting::End => break,
                Nesting::Other => {}
            }
            max = max.max(d);
        }
        (max, n)
    }

    #[test]
    fn flow_and_block_collections_open_and_close() {
        assert_eq!(depth("[[[1]]]").0, 3);
        assert_eq!(depth("a:\n  b:\n    - c\n").0, 3);
        assert_eq!(depth("{a: {b: [1, 2]}}").0, 3);
    }

    /// Brackets inside quoted scalars, escaped quotes and apostrophes in plain scalars
    /// are text, not nesting: the old character-counting pre-check was fooled by them.
    #[test]
    fn brackets_in_scalars_are_not_nesting() {
        assert_eq!(depth("a: \"[[[[\\\"]]]]\"\n").0, 1);
        assert_eq!(depth("a: it's [not] nested\n").0, 1);
        assert_eq!(depth("a: '[[[['\n").0, 1);
    }

    #[test]
    fn tokens_carry_their_line_and_a_bad_token_ends_the_scan() {
        let tokens: Vec<Token> = Scanner::new("a: 1\nb: [2,\n  3]\n").unwrap().collect();
        assert!(tokens.iter().any(|t| t.line == 2), "{tokens:?}");
        // Nothing after the end of the input (libyaml would answer "no token" for ever).
        assert_eq!(tokens.last().map(|t| t.nesting), Some(Nesting::End));
        assert_eq!(
            tokens.iter().filter(|t| t.nesting == Nesting::End).count(),
            1
        );
        // A tab where indentation is expected does not scan: the iterator stops.
        let (_, n) = depth("a:\n\t- b\n");
        assert!(n < 10, "{n}");
    }
}
