//! When do two English sentences state the same fact? The measure behind
//! grouping, redundancy checks and provenance.
//!
//! A sentence becomes a bag of content terms: lower-cased words, English stop
//! words and newsroom filler ("said", "reported") removed, Snowball-stemmed
//! (`rust-stemmers`), numbers kept with their digit grouping removed ("8,000",
//! "8 000" and "8000" are one term). Terms are weighted by TF-IDF over the
//! sentences being compared, so a word every sentence shares (the story's main
//! name) counts for less than a detail (a date, a figure). Similarity is the
//! cosine of two such vectors, in [0, 1].
//!
//! Thresholds, chosen on paraphrase pairs (see the tests) and kept as named
//! constants so the whole tool uses one definition:
//! - [`SAME_FACT`]: at or above it, two sentences state the same fact.
//! - [`RELATED`]: below it, a sentence shares nothing substantial with another.
//!
//! With a sentence encoder ([`super::embed`]) "same fact" is also semantic:
//! [`same_fact`] is the one rule, used by grouping, selection, the abstractive
//! redundancy check and provenance alike. Two texts state the same fact when
//! their embeddings' cosine reaches [`SEMANTIC_SAME_FACT`] or their lexical
//! similarity reaches [`SAME_FACT`], and their numbers do not contradict
//! ([`numbers_contradict`]). The semantic threshold was calibrated with the
//! real all-MiniLM-L6-v2 on the labelled pairs of
//! `tests/fixtures/eval/calibration.tsv` (restatements of one fact across
//! outlets against different facts of one story); the test prints the rule's
//! precision and recall there.

use std::collections::HashMap;

use rust_stemmers::{Algorithm, Stemmer};

/// Cosine similarity at or above which two sentences state the same fact.
pub const SAME_FACT: f32 = 0.3;
/// Cosine similarity below which a sentence is unrelated to another.
pub const RELATED: f32 = 0.15;
/// Cosine similarity at or above which a source sentence supports a generated
/// (abstractive) sentence. Lower than [`SAME_FACT`]: the model rewords and
/// merges facts, so a faithful sentence shares less wording with each source.
pub const SUPPORTS: f32 = 0.25;

/// Embedding cosine at or above which two texts state the same fact (with a
/// sentence encoder; calibrated for all-MiniLM-L6-v2, see the module doc).
pub const SEMANTIC_SAME_FACT: f32 = 0.65;

/// Cosine below which a fact is unrelated to every other fact of the corpus
/// (noise, off-topic), with a sentence encoder; see [`RELATED`].
pub const SEMANTIC_RELATED: f32 = 0.3;

/// The numbers of a text, each with what it counts: digit grouping removed
/// ("8 000" == "8,000" == "8000"), decimals kept ("3,2" -> "3.2"), and the
/// unit the next word or sign names, lower-cased ("km", "%", "soldiers").
/// Sorted and deduplicated.
pub fn numbers(text: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = text.chars().collect();
    let is_digit = |i: usize| chars.get(i).is_some_and(|c| c.is_ascii_digit());
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_digit(i) {
            i += 1;
            continue;
        }
        let mut num = String::new();
        while i < chars.len() {
            let c = chars[i];
            if c.is_ascii_digit() {
                num.push(c);
            } else if matches!(c, ' ' | '\u{a0}' | '\u{202f}' | ',' | '.')
                && (1..=3).all(|k| is_digit(i + k))
                && !is_digit(i + 4)
            {
                // A group separator: skip it.
            } else if matches!(c, ',' | '.') && is_digit(i + 1) {
                num.push('.');
            } else {
                break;
            }
            i += 1;
        }
        let (unit, _) = unit_after(&chars, i);
        out.push((num, unit));
    }
    // Spelled-out small numbers before a unit of measure: "four
    // kilometres", "a four-kilometre fissure", "six days".
    let words: Vec<(usize, String)> = {
        let mut w = Vec::new();
        let mut k = 0;
        while k < chars.len() {
            if chars[k].is_alphabetic() && (k == 0 || !chars[k - 1].is_alphanumeric()) {
                let word: String = chars[k..]
                    .iter()
                    .take_while(|c| c.is_alphabetic())
                    .flat_map(|c| c.to_lowercase())
                    .collect();
                k += word.chars().count();
                w.push((k, word));
            } else {
                k += 1;
            }
        }
        w
    };
    for (end, word) in words {
        if let Some(v) = SPELLED.iter().position(|&x| x == word) {
            let (unit, _) = unit_after(&chars, end);
            if MEASURES.contains(&unit.as_str()) {
                out.push(((v + 1).to_string(), unit));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Numbers one to twelve, spelled out.
const SPELLED: [&str; 12] = [
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve",
];

/// Units of measure, as [`unit_after`] normalises them: a shared quantity of
/// one of these ("4 km" and "four kilometres") is one fact.
const MEASURES: &[&str] = &[
    "kilometre",
    "metre",
    "mile",
    "%",
    "euro",
    "dollar",
    "tonne",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "minute",
];

/// The unit after a number ending at `i`: the next word, lower-cased,
/// singular and unabbreviated ("km" -> "kilometre", "per cent" -> "%"), or
/// the next sign ("%"); a hyphen may join them ("four-kilometre").
fn unit_after(chars: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while chars.get(j).is_some_and(|c| c.is_whitespace() || *c == '-') {
        j += 1;
    }
    if !chars.get(j).is_some_and(|c| c.is_alphabetic()) {
        return (chars.get(j).map(|c| c.to_string()).unwrap_or_default(), j);
    }
    let word: String = chars[j..]
        .iter()
        .take_while(|c| c.is_alphabetic())
        .flat_map(|c| c.to_lowercase())
        .collect();
    let unit = match word.as_str() {
        "km" | "kilometer" | "kilometers" | "kilometres" => "kilometre".to_string(),
        "m" | "meter" | "meters" | "metres" => "metre".to_string(),
        "percent" | "per" => "%".to_string(),
        w if w.len() > 3 && w.ends_with('s') => w[..w.len() - 1].to_string(),
        w => w.to_string(),
    };
    (unit, j)
}

/// Whether two texts' numbers contradict: they count the same unit with
/// different numbers ("rose 3.2% in October" against "rose 2.9% in
/// November"). Embeddings and word overlap both see such sentences as
/// near-identical; the numbers tell two facts of one kind apart. Numbers of
/// different units ("4 km long", "shortly after 10 pm") say nothing either way.
pub fn numbers_contradict(a: &[(String, String)], b: &[(String, String)]) -> bool {
    fn of<'a>(x: &'a [(String, String)], unit: &str) -> Vec<&'a String> {
        x.iter()
            .filter(|(_, u)| u == unit)
            .map(|(n, _)| n)
            .collect()
    }
    a.iter().any(|(_, unit)| {
        let (na, nb) = (of(a, unit), of(b, unit));
        !nb.is_empty() && !na.iter().any(|n| nb.contains(n))
    })
}

/// Whether a number is a specific figure ("3,700 residents", "250 km"): 10
/// or more and not a year, so two texts sharing it most likely report one
/// fact; small counts and years are shared by different facts, unless they
/// measure the same unit ("4 km", "four kilometres").
fn is_figure(n: &str) -> bool {
    let v: f64 = n.parse().unwrap_or(0.0);
    v >= 10.0 && !(n.len() == 4 && (1900.0..=2100.0).contains(&v))
}

/// Lexical similarity at or above which two texts state the same fact
/// whatever their embeddings say (near-verbatim copies across outlets).
pub const SAME_FACT_WITH_EMBEDDINGS: f32 = 0.5;

/// Cosine at or above which two texts sharing a figure state the same fact.
pub const SHARED_FIGURE_COSINE: f32 = 0.45;

/// The "same fact" rule: lexical similarity at or above [`SAME_FACT`] (with
/// embeddings: [`SAME_FACT_WITH_EMBEDDINGS`]), or cosine at or above
/// [`SEMANTIC_SAME_FACT`], or a shared figure ([`is_figure`]) with related
/// wording (lexical [`RELATED`] or cosine [`SHARED_FIGURE_COSINE`]), or a
/// shared rare name with related meaning (cosine [`SHARED_FIGURE_COSINE`];
/// `shared_name`: the caller knows which names are rare in its corpus, see
/// `Corpus::new`); and numbers that do not contradict. "A send-off at
/// Artyom-Primorsky-1 station" and "a farewell ceremony at the
/// Artyom-Primorsky-1 railway station" are one event, in wording MiniLM puts
/// at cosine 0.58. Word overlap is no evidence of related meaning beside a
/// shared name, so without embeddings names count for nothing.
pub fn same_fact(
    lexical: f32,
    cosine: Option<f32>,
    numbers_a: &[(String, String)],
    numbers_b: &[(String, String)],
    shared_name: bool,
) -> bool {
    let figure = numbers_a.iter().any(|(n, u)| {
        numbers_b
            .iter()
            .any(|(m, v)| m == n && (is_figure(n) || (u == v && MEASURES.contains(&u.as_str()))))
    });
    let related = lexical >= RELATED || cosine.is_some_and(|c| c >= SHARED_FIGURE_COSINE);
    // With embeddings, word overlap alone must be near-verbatim: the names
    // a story repeats in every sentence make different facts overlap.
    let lexical_threshold = if cosine.is_some() {
        SAME_FACT_WITH_EMBEDDINGS
    } else {
        SAME_FACT
    };
    (lexical >= lexical_threshold
        || cosine.is_some_and(|c| c >= SEMANTIC_SAME_FACT)
        || (figure && related)
        || (shared_name && cosine.is_some_and(|c| c >= SHARED_FIGURE_COSINE)))
        && !numbers_contradict(numbers_a, numbers_b)
}

/// Days and months: capitalised by convention, not as names, and the
/// story's day is in every article's first sentence whatever fact it tells,
/// so they never anchor a fact (see `facts::rare_names`); and unrelated
/// news of the same day shares them, so they never make a text relevant.
const CALENDAR: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Whether a word, or a term (its stem: "januari"), is a day or a month.
pub fn is_calendar(word: &str) -> bool {
    static ALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        CALENDAR
            .iter()
            .flat_map(|w| [w.to_string()].into_iter().chain(terms(w)))
            .collect()
    });
    all.iter().any(|c| c.eq_ignore_ascii_case(word))
}

/// Function words and newsroom filler that say nothing about the fact.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "said",
    "says",
    "say",
    "told",
    "according",
    "reported",
    "reports",
    "added",
    "stated",
    "mr",
    "mrs",
    "ms",
    "s",
    "t",
    "would",
    "may",
    "might",
    "must",
    "shall",
    "one",
    "yet",
    "since",
    "however",
    "therefore",
    "thus",
    "whether",
    "within",
    "without",
    "upon",
    "via",
];

/// Content terms of a sentence, in order (with repeats): stemmed content words.
pub fn terms(sentence: &str) -> Vec<String> {
    thread_local! {
        static STEMMER: Stemmer = Stemmer::create(Algorithm::English);
    }
    content_words(sentence)
        .into_iter()
        .map(|w| {
            if w.starts_with(|c: char| c.is_numeric()) {
                w
            } else {
                STEMMER.with(|s| s.stem(&w).into_owned())
            }
        })
        .collect()
}

/// Lower-cased words minus stop words, and numbers without digit grouping.
pub fn content_words(sentence: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = sentence.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_numeric() {
            // A number with its grouping (spaces, commas, dots between digit
            // groups of three) removed: "8 000" == "8,000" == "8000".
            let mut num = String::new();
            while i < chars.len() {
                let c = chars[i];
                if c.is_numeric() {
                    num.push(c);
                    i += 1;
                } else if matches!(c, ' ' | '\u{a0}' | '\u{202f}' | ',' | '.')
                    && i + 3 < chars.len()
                    && chars[i + 1..=i + 3].iter().all(|d| d.is_numeric())
                    && !chars.get(i + 4).is_some_and(|d| d.is_numeric())
                {
                    i += 1; // a group separator
                } else {
                    break;
                }
            }
            out.push(num);
        } else if c.is_alphabetic() {
            let mut w = String::new();
            while i < chars.len() && (chars[i].is_alphanumeric() || is_inner_apostrophe(&chars, i))
            {
                w.extend(chars[i].to_lowercase());
                i += 1;
            }
            // Possessives and contractions: "Putin's" -> "putin".
            let w = w.replace('’', "'");
            let w = w.split('\'').next().unwrap_or("").to_string();
            if !w.is_empty() && !STOP_WORDS.contains(&w.as_str()) {
                out.push(w);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_inner_apostrophe(chars: &[char], i: usize) -> bool {
    matches!(chars[i], '\'' | '’')
        && i > 0
        && chars[i - 1].is_alphabetic()
        && chars.get(i + 1).is_some_and(|c| c.is_alphabetic())
}

/// TF-IDF vectors of a fixed set of bags of features, L2-normalised, so that
/// cosine similarity is a dot product.
struct TfIdf {
    vectors: Vec<Vec<(u32, f32)>>,
    vocab: HashMap<String, u32>,
    idf: Vec<f32>,
    /// feature -> (sentence, weight), for similarity rows without all pairs.
    postings: Vec<Vec<(u32, f32)>>,
}

impl TfIdf {
    /// Index bags of features, converting each bag to ids as it comes, so
    /// the strings of all sentences are never held at once.
    fn new(bags: impl Iterator<Item = Vec<String>>) -> Self {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let ids: Vec<Vec<u32>> = bags
            .map(|b| {
                let mut ids: Vec<u32> = b
                    .into_iter()
                    .map(|t| match vocab.get(&t) {
                        Some(&id) => id,
                        None => {
                            let n = vocab.len() as u32;
                            vocab.insert(t, n);
                            n
                        }
                    })
                    .collect();
                ids.sort_unstable();
                ids
            })
            .collect();
        let mut df = vec![0u32; vocab.len()];
        for b in &ids {
            let mut u = b.clone();
            u.dedup();
            for t in u {
                df[t as usize] += 1;
            }
        }
        let n = ids.len() as f32;
        // Smoothed IDF (as scikit-learn's): never zero, so a feature shared by
        // every sentence still counts a little.
        let idf: Vec<f32> = df
            .iter()
            .map(|&d| ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0)
            .collect();
        let vectors: Vec<Vec<(u32, f32)>> = ids
            .iter()
            .map(|b| normalise(b.iter().map(|&t| (t, idf[t as usize])).collect()))
            .collect();
        let mut postings = vec![Vec::new(); vocab.len()];
        for (s, v) in vectors.iter().enumerate() {
            for &(t, w) in v {
                postings[t as usize].push((s as u32, w));
            }
        }
        TfIdf {
            vectors,
            vocab,
            idf,
            postings,
        }
    }

    /// Vector of a bag outside the index. Unseen features get the highest IDF
    /// (they are rare by definition) and stable hashed ids in the upper half of
    /// the id space, so two outside vectors compare correctly with each other.
    fn vector(&self, bag: Vec<String>) -> Vec<(u32, f32)> {
        use std::hash::{Hash, Hasher};
        let unseen = (1.0 + self.vectors.len() as f32).ln() + 1.0;
        normalise(
            bag.into_iter()
                .map(|t| match self.vocab.get(&t) {
                    Some(&id) => (id, self.idf[id as usize]),
                    None => {
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        t.hash(&mut h);
                        let half = u32::MAX / 2;
                        (half + (h.finish() % u64::from(half)) as u32, unseen)
                    }
                })
                .collect(),
        )
    }
}

/// Sum weights of equal ids (term frequency) and L2-normalise.
fn normalise(mut ids: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    ids.sort_by_key(|p| p.0);
    let mut v: Vec<(u32, f32)> = Vec::with_capacity(ids.len());
    for (t, w) in ids {
        match v.last_mut() {
            Some((last, acc)) if *last == t => *acc += w,
            _ => v.push((t, w)),
        }
    }
    let norm = v.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
    if norm > 0.0 {
        for (_, w) in &mut v {
            *w /= norm;
        }
    }
    v
}

/// Character 4-grams of the content words ("_norway_" -> "_nor", "norw", ...):
/// they let "Norway"/"Norwegian" and "rail"/"railway" overlap, which stems miss.
pub fn char_grams(sentence: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in content_words(sentence) {
        let padded: Vec<char> = format!("_{w}_").chars().collect();
        if padded.len() <= 4 {
            out.push(padded.iter().collect());
        } else {
            out.extend(padded.windows(4).map(|g| g.iter().collect::<String>()));
        }
    }
    out
}

/// Similarity of sentences: the mean of the cosine of stem TF-IDF vectors and
/// the cosine of character 4-gram TF-IDF vectors, over a fixed set of sentences.
pub struct SimilarityIndex {
    words: TfIdf,
    grams: TfIdf,
}

/// An outside sentence's vectors (see [`SimilarityIndex::vector`]).
#[derive(Debug, Clone)]
pub struct Vector {
    words: Vec<(u32, f32)>,
    grams: Vec<(u32, f32)>,
}

impl Vector {
    /// Similarity of two outside sentences.
    pub fn sim(&self, other: &Vector) -> f32 {
        0.5 * (dot(&self.words, &other.words) + dot(&self.grams, &other.grams))
    }
}

impl SimilarityIndex {
    /// Index `sentences`; IDF is computed over them.
    pub fn new<S: AsRef<str>>(sentences: &[S]) -> Self {
        SimilarityIndex {
            words: TfIdf::new(sentences.iter().map(|s| terms(s.as_ref()))),
            grams: TfIdf::new(sentences.iter().map(|s| char_grams(s.as_ref()))),
        }
    }

    /// Vectors of a sentence outside the index, with the index's IDF.
    pub fn vector(&self, sentence: &str) -> Vector {
        Vector {
            words: self.words.vector(terms(sentence)),
            grams: self.grams.vector(char_grams(sentence)),
        }
    }

    /// Similarity of indexed sentences `a` and `b`.
    pub fn sim(&self, a: usize, b: usize) -> f32 {
        0.5 * (dot(&self.words.vectors[a], &self.words.vectors[b])
            + dot(&self.grams.vectors[a], &self.grams.vectors[b]))
    }

    /// Similarity of an outside sentence's vectors and indexed sentence `b`.
    pub fn sim_to(&self, v: &Vector, b: usize) -> f32 {
        0.5 * (dot(&v.words, &self.words.vectors[b]) + dot(&v.grams, &self.grams.vectors[b]))
    }

    /// Every indexed sentence with a non-zero similarity to indexed sentence
    /// `a` (itself included), ascending by index. Walks the postings of `a`'s
    /// features only, so a row costs what the sentences sharing features with
    /// `a` cost, not the whole corpus: grouping 500 articles stays fast.
    pub fn row(&self, a: usize) -> Vec<(usize, f32)> {
        // Dense accumulator over the corpus plus the list of touched entries:
        // cheaper than a hash map when common features have long postings.
        let mut acc = vec![0f32; self.len()];
        let mut touched: Vec<u32> = Vec::new();
        for index in [&self.words, &self.grams] {
            for &(t, w) in &index.vectors[a] {
                for &(s, w2) in &index.postings[t as usize] {
                    let slot = &mut acc[s as usize];
                    if *slot == 0.0 {
                        touched.push(s);
                    }
                    *slot += 0.5 * w * w2;
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        touched
            .into_iter()
            .map(|s| (s as usize, acc[s as usize].min(1.0)))
            .collect()
    }

    /// Number of indexed sentences.
    pub fn len(&self) -> usize {
        self.words.vectors.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Dot product of two sparse vectors sorted by term id.
pub fn dot(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
    let (mut i, mut j, mut s) = (0, 0, 0f32);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                s += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    s.min(1.0)
}
