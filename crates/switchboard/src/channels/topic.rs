//! Topic patterns: which channel handler serves which topics.
//!
//! A pattern is literal text with, optionally, `{name}` segments and a final `*`:
//!
//! - `lobby` matches exactly `lobby`;
//! - `room:*` matches every topic that starts with `room:` (`room:` itself too, as in
//!   Phoenix, where `channel "room:*"` matches on the prefix);
//! - `user:{id}` matches `user:42` and captures `id = "42"`; a `{name}` segment matches
//!   one or more characters up to the next `:`.

use std::fmt;

/// A parsed topic pattern.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TopicPattern {
    raw: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
    Rest,
}

/// Why a topic pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is empty.
    #[error("topic pattern is empty")]
    Empty,
    /// A `*` that is not the last character.
    #[error("`*` must end the topic pattern")]
    StarNotLast,
    /// A `{` without its `}`, or a `}` without its `{`.
    #[error("unbalanced braces in topic pattern")]
    Braces,
    /// A `{}` segment without a name, or a name that is not `[A-Za-z0-9_]+`.
    #[error("a `{{name}}` segment needs a name of letters, digits and `_`")]
    ParamName,
    /// Two segments with nothing between them (`{a}{b}`, `{a}*`): ambiguous.
    #[error("two segments must be separated by literal text")]
    Adjacent,
}

impl TopicPattern {
    pub(crate) fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = raw.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '*' => {
                    if i + 1 != raw.len() {
                        return Err(PatternError::StarNotLast);
                    }
                    push_segment(&mut parts, &mut literal, Part::Rest)?;
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                            Some((_, '{')) | None => return Err(PatternError::Braces),
                            Some(_) => return Err(PatternError::ParamName),
                        }
                    }
                    if name.is_empty() {
                        return Err(PatternError::ParamName);
                    }
                    push_segment(&mut parts, &mut literal, Part::Param(name))?;
                }
                '}' => return Err(PatternError::Braces),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            raw: raw.to_owned(),
            parts,
        })
    }

    /// The captured `{name}` segments when `topic` matches.
    /// The pattern as written: a metrics label (it has few values, unlike topics).
    pub(crate) fn as_str(&self) -> &str {
        &self.raw
    }

    pub(crate) fn matches(&self, topic: &str) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        let mut rest = topic;
        for part in &self.parts {
            match part {
                Part::Literal(literal) => rest = rest.strip_prefix(literal.as_str())?,
                Part::Param(name) => {
                    let end = rest.find(':').unwrap_or(rest.len());
                    if end == 0 {
                        return None;
                    }
                    let (value, tail) = rest.split_at(end);
                    params.push((name.clone(), value.to_owned()));
                    rest = tail;
                }
                Part::Rest => rest = "",
            }
        }
        rest.is_empty().then_some(params)
    }
}

fn push_segment(
    parts: &mut Vec<Part>,
    literal: &mut String,
    part: Part,
) -> Result<(), PatternError> {
    if literal.is_empty() {
        if matches!(parts.last(), Some(Part::Param(_) | Part::Rest)) {
            return Err(PatternError::Adjacent);
        }
    } else {
        parts.push(Part::Literal(std::mem::take(literal)));
    }
    parts.push(part);
    Ok(())
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pattern: &str, topic: &str) -> Option<Vec<(String, String)>> {
        TopicPattern::parse(pattern).unwrap().matches(topic)
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn exact_topics() {
        assert_eq!(params("lobby", "lobby"), Some(vec![]));
        assert_eq!(params("lobby", "lobby2"), None);
        assert_eq!(params("lobby", "lobb"), None);
    }

    #[test]
    fn prefix_topics_like_phoenix() {
        assert_eq!(params("room:*", "room:lobby"), Some(vec![]));
        assert_eq!(params("room:*", "room:a:b"), Some(vec![]));
        // Phoenix's `"room:" <> _rest` matches the bare prefix too.
        assert_eq!(params("room:*", "room:"), Some(vec![]));
        assert_eq!(params("room:*", "rooms:x"), None);
        assert_eq!(params("*", "anything"), Some(vec![]));
    }

    #[test]
    fn named_segments() {
        assert_eq!(params("user:{id}", "user:42"), Some(vec![pair("id", "42")]));
        assert_eq!(params("user:{id}", "user:"), None);
        assert_eq!(params("user:{id}", "user:4:2"), None);
        assert_eq!(
            params("org:{org}:team:{team}", "org:a:team:b"),
            Some(vec![pair("org", "a"), pair("team", "b")])
        );
        assert_eq!(
            params("doc:{id}:*", "doc:7:rev:3"),
            Some(vec![pair("id", "7")])
        );
    }

    #[test]
    fn invalid_patterns() {
        assert_eq!(TopicPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(TopicPattern::parse("a*b"), Err(PatternError::StarNotLast));
        assert_eq!(TopicPattern::parse("a{b"), Err(PatternError::Braces));
        assert_eq!(TopicPattern::parse("a}b"), Err(PatternError::Braces));
        assert_eq!(TopicPattern::parse("a{}"), Err(PatternError::ParamName));
        assert_eq!(TopicPattern::parse("a{b-c}"), Err(PatternError::ParamName));
        assert_eq!(TopicPattern::parse("a{b}{c}"), Err(PatternError::Adjacent));
        assert_eq!(TopicPattern::parse("a{b}*"), Err(PatternError::Adjacent));
    }
}
