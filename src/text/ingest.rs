//! Ingestion of scraped articles: decode, strip page noise, keep paragraphs.
//!
//! The rules are conservative and each one is tested on the corpus: a line is
//! dropped only when it is page chrome (a stray header token, a newsletter or
//! comment-form line, a widget error), and a leading `date YYYY-MM` stamp is cut
//! from the text it is glued to. Once the page footer starts (a newsletter box or
//! comment form in the last part of the article), everything after it is chrome
//! too: unrelated headlines, widgets. Titles, subheadings and credit lines such as
//! "Via AFP" are kept: they are the article's own text, and a faithful
//! translation keeps them.

use crate::error::{Error, Result};

/// One cleaned article: paragraphs in order, and what was removed (1-based line numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct Cleaned {
    pub paragraphs: Vec<String>,
    /// Source line numbers (1-based) dropped as noise.
    pub dropped_lines: Vec<usize>,
}

/// Lines that are page chrome wherever they appear (lower-cased substring match).
const CHROME: &[&str] = &[
    "giphy app key not set",
    "vous pouvez vous désabonner",
    "en vous inscrivant, vous acceptez",
    "votre adresse e-mail ne sera pas publiée",
    "les champs obligatoires sont indiqués",
    "laisser un commentaire",
    "abonnez-vous à notre newsletter",
    "inscrivez-vous à notre newsletter",
];

/// Lines that open the page footer (newsletter box, comment form).
const FOOTER_START: &[&str] = &[
    "le bulletin d’information",
    "le bulletin d'information",
    "newsletter",
    "laisser un commentaire",
    "vous pouvez vous désabonner",
];

/// Decode raw bytes as UTF-8 text (BOM removed, CRLF -> LF), naming the file on failure.
pub fn decode(path: &std::path::Path, bytes: &[u8]) -> Result<String> {
    if bytes.contains(&0) {
        return Err(Error::file(
            path,
            "contains NUL bytes: this is binary data, not an article",
            "remove the file from the corpus or replace it with the article's text",
            None,
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::file(
            path,
            format!(
                "is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
            format!(
                "convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 {0} > {0}.utf8`",
                path.display()
            ),
            Some(Box::new(e)),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Ok(text.replace("\r\n", "\n").replace('\r', "\n"))
}

fn is_stray_token(line: &str) -> bool {
    // A lone short lower-case word, e.g. the "in" left over from a page header.
    let t = line.trim();
    !t.is_empty() && t.chars().count() <= 3 && t.chars().all(|c| c.is_lowercase())
}

/// Remove a leading `date YYYY-MM[-DD]` stamp glued to the first line.
fn strip_date_stamp(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let rest = t.strip_prefix("date ")?;
    let stamp_len = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .count();
    let stamp = &rest[..stamp_len];
    let parts: Vec<&str> = stamp.split('-').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts[0].len() == 4
        && parts[1..].iter().all(|p| p.len() == 2)
        && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit()));
    ok.then(|| rest[stamp_len..].trim_start())
}

/// Clean one article's text into paragraphs (one per non-empty line).
pub fn clean(text: &str) -> Cleaned {
    let lines: Vec<&str> = text.split('\n').collect();
    let content_lines = lines.iter().filter(|l| !l.trim().is_empty()).count();
    let mut paragraphs = Vec::new();
    let mut dropped = Vec::new();
    let mut seen_content = 0usize;
    let mut in_footer = false;
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        seen_content += 1;
        let lower = line.to_lowercase();
        // The footer can only start in the last 40% of the article's lines.
        if !in_footer
            && seen_content * 5 > content_lines * 3
            && FOOTER_START
                .iter()
                .any(|m| lower.starts_with(m) || lower.contains(m))
        {
            in_footer = true;
        }
        if in_footer || CHROME.iter().any(|m| lower.contains(m)) {
            dropped.push(n);
            continue;
        }
        if paragraphs.is_empty() && is_stray_token(line) {
            dropped.push(n);
            continue;
        }
        let line = if paragraphs.is_empty() {
            strip_date_stamp(line).unwrap_or(line)
        } else {
            line
        };
        if !line.is_empty() {
            paragraphs.push(line.to_string());
        }
    }
    Cleaned {
        paragraphs,
        dropped_lines: dropped,
    }
}

/// Split `text` into pieces of at most `max` units as counted by `count`,
/// cutting at the best boundary nearest the middle: a sentence-internal
/// punctuation mark (; : , — –), else a space, else the middle character.
pub fn split_to_fit(text: &str, max: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let text = text.trim();
    if text.is_empty() || count(text) <= max {
        return vec![text.to_string()];
    }
    let mid = text.len() / 2;
    // A cut goes after the mark and must be followed by whitespace: "3,5" or
    // "l'État" are never cut inside.
    let candidates = |pred: &dyn Fn(char) -> bool| -> Option<usize> {
        text.char_indices()
            .filter(|&(i, c)| pred(c) && i > 0 && i + c.len_utf8() < text.len())
            .map(|(i, c)| i + c.len_utf8())
            .filter(|&j| text[j..].starts_with(char::is_whitespace))
            .min_by_key(|&i| i.abs_diff(mid))
    };
    let cut = candidates(&|c| matches!(c, ';' | ':' | ',' | '—' | '–'))
        .or_else(|| {
            // At a whitespace run: cut before it.
            text.char_indices()
                .filter(|&(i, c)| c.is_whitespace() && i > 0)
                .map(|(i, _)| i)
                .min_by_key(|&i| i.abs_diff(mid))
        })
        .unwrap_or_else(|| {
            let mut m = mid;
            while !text.is_char_boundary(m) {
                m += 1;
            }
            m
        });
    let (a, b) = text.split_at(cut);
    let mut out = split_to_fit(a, max, count);
    out.extend(split_to_fit(b, max, count));
    out.retain(|s| !s.is_empty());
    out
}
