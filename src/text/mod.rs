//! Text units for translation: lines or sentences.
//!
//! Sentence splitting is rule-based and conservative, tuned to French news
//! prose: it never splits after a title abbreviation ("M.", "Mme", "Dr."), a
//! single capital initial, or inside a number, and it keeps closing quotes
//! (», ”, ") with the sentence they end. When in doubt it does not split,
//! because a missed split only costs a longer segment while a wrong split
//! changes the meaning the model sees.
//!
//! Why not a crate: `sentencex` 0.1.33 (`segment("fr", …)`) was run on the five
//! corpus articles and splits after the "M." of "M. Poutine" and "M. Peskov"
//! (2 wrong boundaries in 98 sentences), which the French rules here must not
//! do; `srx` needs an external SRX rule file (e.g. LanguageTool's) that we
//! would then have to ship and maintain; `unicode-segmentation` (UAX #29) has
//! no abbreviation handling at all.

pub mod ingest;

/// Abbreviations after which a period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "M", "MM", "Mme", "Mmes", "Mlle", "Dr", "Pr", "Me", "St", "Ste", "etc", "cf", "av", "apr",
    "J.-C", "p", "vol", "n°", "No", "Mr", "Mrs", "Ms", "Prof", "Gen", "Gén", "Col", "Lt", "Sgt",
    "Jr", "Sr", "vs",
];

fn is_closing(c: char) -> bool {
    matches!(c, '»' | '”' | '"' | '’' | '\'' | ')' | ']')
}

/// Split one paragraph into sentences (trimmed, non-empty, in order).
pub fn split_sentences(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < chars.len() {
        let (_, c) = chars[i];
        if matches!(c, '.' | '!' | '?' | '…') {
            // Swallow runs of terminators and closing quotes.
            let mut j = i + 1;
            while j < chars.len()
                && (matches!(chars[j].1, '.' | '!' | '?' | '…') || is_closing(chars[j].1))
            {
                j += 1;
            }
            // A sentence ends only before whitespace followed by a plausible start.
            let mut k = j;
            while k < chars.len() && chars[k].1.is_whitespace() {
                k += 1;
            }
            let at_space = k > j;
            let next_starts = k < chars.len() && {
                let n = chars[k].1;
                n.is_uppercase()
                    || n.is_numeric()
                    || matches!(n, '«' | '“' | '"' | '—' | '–' | '-' | '(')
            };
            if at_space && next_starts && !(c == '.' && is_abbreviation(text, &chars, start, i)) {
                let end = if j < chars.len() {
                    chars[j].0
                } else {
                    text.len()
                };
                let s = text[chars_offset(&chars, start, text)..end].trim();
                if !s.is_empty() {
                    out.push(s);
                }
                start = k;
                i = k;
                continue;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    let rest = text[chars_offset(&chars, start, text)..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

fn chars_offset(chars: &[(usize, char)], idx: usize, text: &str) -> usize {
    chars.get(idx).map_or(text.len(), |c| c.0)
}

/// Whether the period at char index `dot` closes an abbreviation or an initial.
fn is_abbreviation(text: &str, chars: &[(usize, char)], start: usize, dot: usize) -> bool {
    let mut w = dot;
    while w > start && !chars[w - 1].1.is_whitespace() && chars[w - 1].1 != '(' {
        w -= 1;
    }
    let word = &text[chars[w].0..chars[dot].0];
    if word.chars().count() == 1 && word.chars().all(char::is_uppercase) {
        return true; // an initial: "J. Smith"
    }
    ABBREVIATIONS.contains(&word)
}
