//! The merged summary: grouping by fact, the similarity threshold, extractive
//! selection within a word budget, provenance, noise and off-topic exclusion,
//! determinism, the abstractive input window, and the `summarize` command.
//!
//! Input: tests/fixtures/summary/, five English articles written for these
//! tests: four retell one event with overlapping facts (two of them carry
//! scraped noise: a newsletter box, a comment form), one is off-topic.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use transum::summary::similarity::{SimilarityIndex, SAME_FACT};
use transum::summary::{abstractive, extractive, Article, Corpus, Summary};

use crate::harness::{assert_success, fixture_model, repo, transum, TempDir};

/// The test articles' paths, sorted.
fn article_paths() -> Vec<PathBuf> {
    let dir = repo().join("tests/fixtures/summary");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
}

fn articles() -> Vec<Article> {
    article_paths()
        .into_iter()
        .map(|p| Article {
            name: p.file_name().unwrap().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(&p).unwrap(),
        })
        .collect()
}

/// The facts of the fixture story: (label, [(article, a phrase of its sentence)]).
fn facts() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "announcement",
            vec![
                ("a-nrk.txt", "Norway's government announced"),
                ("b-aftenposten.txt", "unveiled plans"),
                ("c-reuters.txt", "Norway will build"),
                ("d-local.txt", "The government said on Monday"),
            ],
        ),
        (
            "length and cost",
            vec![
                ("a-nrk.txt", "14 kilometres long"),
                ("b-aftenposten.txt", "14-kilometre tunnel"),
                ("c-reuters.txt", "14 km long"),
            ],
        ),
        (
            "travel time",
            vec![
                ("a-nrk.txt", "cut the travel time"),
                ("b-aftenposten.txt", "halve the travel time"),
                ("d-local.txt", "cut in half"),
            ],
        ),
        (
            "schedule",
            vec![
                ("a-nrk.txt", "due to start in 2027"),
                ("c-reuters.txt", "scheduled to begin in 2027"),
                ("d-local.txt", "should begin in 2027"),
            ],
        ),
        (
            "environment",
            vec![
                ("a-nrk.txt", "Environmental groups criticised"),
                ("c-reuters.txt", "Environmental groups warned"),
            ],
        ),
    ]
}

/// The fact a sentence states, if any.
fn fact_of(sentence: &str) -> Option<&'static str> {
    facts()
        .into_iter()
        .find(|(_, s)| s.iter().any(|(_, p)| sentence.contains(p)))
        .map(|(f, _)| f)
}

#[test]
fn same_fact_threshold_separates_restatements_from_other_facts() {
    // Restatements of one fact (wording, word order, numbers written
    // differently) reach SAME_FACT; different facts of the same story, which
    // share its names, stay below it.
    let same = [
        (
            "Norway's government announced on Monday that it will build a rail tunnel under the Oslo fjord.",
            "The Norwegian government on Monday unveiled plans for a railway tunnel beneath the Oslo fjord.",
        ),
        (
            "The tunnel will be 14 kilometres long and will cost about 3 billion euros.",
            "The project, a tunnel 14 km long, will cost around 3 billion euros.",
        ),
        (
            "Kim Jong-un left Russia on Sunday after a six-day visit.",
            "The North Korean leader Kim Jong-un left Russia on Sunday, ending a visit of six days.",
        ),
        (
            "The Kremlin said no agreement was signed during the visit.",
            "No agreement was signed, the Kremlin said.",
        ),
        (
            "The army deployed 8,000 soldiers on 14 September.",
            "On 14 September, 8 000 soldiers were deployed by the army.",
        ),
    ];
    let different = [
        (
            "Norway's government announced on Monday that it will build a rail tunnel under the Oslo fjord.",
            "Environmental groups warned that digging the tunnel could harm the fjord's seabed.",
        ),
        (
            "Kim Jong-un left Russia on Sunday after a six-day visit.",
            "Putin accepted Kim Jong-un's invitation to visit North Korea.",
        ),
        (
            "Kim Jong-un received five drones and a bulletproof vest from the governor.",
            "Kim Jong-un and Vladimir Putin exchanged rifles at the end of their meeting.",
        ),
        (
            "The Kremlin said no agreement was signed during the visit.",
            "Western countries fear an arms deal between Russia and North Korea.",
        ),
    ];
    let all: Vec<&str> = same
        .iter()
        .chain(&different)
        .flat_map(|(a, b)| [*a, *b])
        .collect();
    let index = SimilarityIndex::new(&all);
    for (i, (a, b)) in same.iter().enumerate() {
        let sim = index.sim(2 * i, 2 * i + 1);
        assert!(
            sim >= SAME_FACT,
            "same fact, similarity {sim:.2}:\n  {a}\n  {b}"
        );
    }
    for (i, (a, b)) in different.iter().enumerate() {
        let k = 2 * (same.len() + i);
        let sim = index.sim(k, k + 1);
        assert!(
            sim < SAME_FACT,
            "different facts, similarity {sim:.2}:\n  {a}\n  {b}"
        );
    }
}

/// The lexical extractive summary (no sentence encoder).
fn extract(articles: &[Article], max_words: usize) -> Summary {
    extractive::summarize(articles, max_words, None).unwrap()
}

/// No two summary sentences state the same fact, by the corpus' rule.
fn assert_no_repeats(summary: &Summary, corpus: &Corpus) {
    let v: Vec<_> = summary
        .sentences
        .iter()
        .map(|s| corpus.query(&s.text).unwrap())
        .collect();
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            assert!(
                !v[i].same_fact(&v[j]),
                "two summary sentences state the same fact:\n  {}\n  {}",
                summary.sentences[i].text,
                summary.sentences[j].text
            );
        }
    }
}

#[test]
fn extractive_summary_states_each_fact_once_with_its_sources() {
    let arts = articles();
    let corpus = Corpus::new(&arts, None).unwrap();
    let summary = extract(&arts, 120);
    let words: usize = summary
        .sentences
        .iter()
        .map(|s| s.text.split_whitespace().count())
        .sum();
    assert!(words <= 120, "{words} words");
    assert_no_repeats(&summary, &corpus);
    let stated: Vec<Option<&str>> = summary.sentences.iter().map(|s| fact_of(&s.text)).collect();
    for (fact, sentences) in facts() {
        let n = stated.iter().filter(|f| **f == Some(fact)).count();
        if sentences.len() >= 3 {
            assert_eq!(
                n,
                1,
                "{fact} (reported by {} articles) must be stated once",
                sentences.len()
            );
        } else {
            assert!(n <= 1, "{fact} stated {n} times");
        }
    }
    // Provenance: exactly the articles reporting the fact.
    for s in &summary.sentences {
        let fact = fact_of(&s.text).unwrap_or_else(|| panic!("not a story fact: {:?}", s.text));
        let want: BTreeSet<&str> = facts()
            .into_iter()
            .find(|(f, _)| *f == fact)
            .unwrap()
            .1
            .iter()
            .map(|(a, _)| *a)
            .collect();
        let got: BTreeSet<&str> = s.sources.iter().map(String::as_str).collect();
        assert_eq!(got, want, "sources of {:?}", s.text);
        for sup in &s.support {
            assert!(want.contains(sup.article.as_str()) && sup.similarity > 0.0);
        }
    }
    // Story order: the announcement opens the digest.
    assert_eq!(stated.first().copied().flatten(), Some("announcement"));
}

#[test]
fn noise_and_off_topic_articles_contribute_nothing() {
    for summary in [extract(&articles(), 10_000), extract(&articles(), 120)] {
        for s in &summary.sentences {
            for bad in [
                "Rosenborg",
                "goal",
                "Ticket",
                "newsletter",
                "comment",
                "email",
                "Required",
            ] {
                assert!(
                    !s.text.contains(bad),
                    "noise or off-topic text in {:?}",
                    s.text
                );
            }
            assert!(!s.sources.iter().any(|a| a == "e-sport.txt"), "{s:?}");
        }
    }
    // Even with no budget limit, only story facts are chosen.
    let all = extract(&articles(), 10_000);
    assert!(all.sentences.iter().all(|s| fact_of(&s.text).is_some()));
    assert!(all
        .left_out
        .iter()
        .any(|l| l.text.contains("Rosenborg") && l.reason.contains("shares nothing")));
}

#[test]
fn a_tight_budget_keeps_the_most_reported_facts() {
    // 20 words hold one sentence: a fact that at least three articles report.
    let summary = extract(&articles(), 20);
    assert_eq!(summary.sentences.len(), 1, "{:?}", summary.sentences);
    assert!(
        summary.sentences[0].sources.len() >= 3,
        "{:?}",
        summary.sentences
    );
    assert!(fact_of(&summary.sentences[0].text).is_some());
}

#[test]
fn summaries_are_deterministic() {
    let a = serde_json::to_string(&extract(&articles(), 120)).unwrap();
    let b = serde_json::to_string(&extract(&articles(), 120)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn abstractive_input_fits_the_window_and_says_what_was_left_out() {
    let arts = articles();
    let corpus = Corpus::new(&arts, None).unwrap();
    let words = |t: &str| Ok(t.split_whitespace().count());
    let all = abstractive::select_input(&corpus, 10_000, &words).unwrap();
    // One sentence per eligible fact, no noise, in story order.
    assert_eq!(all.sentences.len(), 5);
    assert!(!all.text.contains("newsletter") && !all.text.contains("Rosenborg"));
    let first = &corpus.sentences[all.sentences[0]].text;
    assert_eq!(fact_of(first), Some("announcement"), "{first}");
    let small = abstractive::select_input(&corpus, 40, &words).unwrap();
    assert!(small.tokens <= 40);
    assert!(small.sentences.len() < 5);
    assert!(small.left_out.iter().any(|l| l
        .reason
        .contains("does not fit the model's 40-token window")));
}

#[test]
fn summarize_command_prints_markdown_or_writes_both_files() {
    let dir = TempDir::new("summarize");
    let files: Vec<String> = article_paths()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut args = vec![
        "summarize",
        "--summarizer",
        "extractive",
        "--max-words",
        "120",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = transum(dir.path(), &args, None);
    assert_success(&out);
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.starts_with("# Summary"), "{md}");
    assert!(
        md.contains("[a-nrk.txt, b-aftenposten.txt, c-reuters.txt, d-local.txt]"),
        "{md}"
    );

    args.extend(["-o", "digest"]);
    let out = transum(dir.path(), &args, None);
    assert_success(&out);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("digest/summary.md")).unwrap(),
        md
    );
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("digest/summary.json")).unwrap(),
    )
    .unwrap();
    let sentences = json["sentences"].as_array().unwrap();
    assert!(sentences.len() >= 4);
    for s in sentences {
        assert!(!s["sources"].as_array().unwrap().is_empty());
        assert!(!s["support"].as_array().unwrap().is_empty());
    }
}

/// `summarize FLAGS -o out ARTICLES`: `FLAGS` start at index 1 and "out"
/// follows them, so a test can rerun with one argument changed.
fn summarize_args(flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = std::iter::once("summarize")
        .chain(flags.iter().copied())
        .chain(["-o", "out"])
        .map(String::from)
        .collect();
    args.extend(
        article_paths()
            .iter()
            .map(|p| p.to_string_lossy().into_owned()),
    );
    args
}

/// out/summary.json under `dir`.
fn read_summary(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("out/summary.json")).unwrap()).unwrap()
}

#[test]
fn abstractive_summaries_cite_sources_for_every_kept_sentence() {
    // The random fixture model writes nonsense; what must hold is the contract:
    // every kept sentence is supported and cited, the rest is listed as left out.
    let dir = TempDir::new("abstractive");
    let bart = fixture_model("bart-a");
    let args = summarize_args(&["--summary-model", bart.to_str().unwrap()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = transum(dir.path(), &refs, None);
    assert_success(&out);
    let json = read_summary(dir.path());
    assert_eq!(json["summarizer"], "abstractive");
    assert!(!json["raw_output"].as_str().unwrap().is_empty());
    // The summary model quantized at load runs the same pipeline.
    let mut q = refs.clone();
    assert_eq!(q[4], "out");
    q[4] = "out-q8";
    q.extend(["--summary-quantize", "q8_0"]);
    let out = transum(dir.path(), &q, None);
    assert_success(&out);
    assert!(dir.path().join("out-q8/summary.json").is_file());
    for s in json["sentences"].as_array().unwrap() {
        assert!(!s["sources"].as_array().unwrap().is_empty(), "{s}");
    }
    // A translation model is not a summarizer: a setup error saying so.
    let marian = fixture_model("marian-a");
    let out = transum(
        dir.path(),
        &[
            "summarize",
            "--summary-model",
            marian.to_str().unwrap(),
            refs[refs.len() - 1],
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a summarizer"));
}

#[test]
fn embed_model_loads_from_a_directory_and_is_named_when_missing_offline() {
    let dir = TempDir::new("embed-model");
    let bert = fixture_model("bert-a");
    let args = summarize_args(&[
        "--summarizer",
        "extractive",
        "--embed-model",
        bert.to_str().unwrap(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = transum(dir.path(), &refs, None);
    assert_success(&out);
    let json = read_summary(dir.path());
    assert_eq!(json["embed_model"], bert.to_string_lossy().as_ref());
    assert!(json["semantic_threshold"].as_f64().is_some());
    // The default model, offline and not cached: a setup error naming it and
    // the way out.
    let mut missing = refs.clone();
    missing[4] = "sentence-transformers/all-MiniLM-L6-v2";
    let out = transum(dir.path(), &missing, None);
    crate::harness::assert_setup_error(&out, &["all-MiniLM-L6-v2", "transum download"]);
}

#[test]
fn average_linkage_never_chains_different_facts() {
    use transum::summary::facts::average_linkage;
    // A~B and B~C, but A and C state different facts: B joins one of them,
    // A and C never share a group.
    let chain = vec![vec![1], vec![0, 2], vec![1]];
    let groups = average_linkage(&chain, &[vec![], vec![], vec![]], None);
    assert!(
        groups.iter().all(|g| !(g.contains(&0) && g.contains(&2))),
        "{groups:?}"
    );
    // Four restatements, each linked to the others: one group.
    let clique: Vec<Vec<usize>> = (0..4)
        .map(|i| (0..4).filter(|&j| j != i).collect())
        .collect();
    assert_eq!(
        average_linkage(&clique, &vec![vec![]; 4], None),
        vec![vec![0, 1, 2, 3]]
    );
    // With embeddings, a pair below the same-fact line joins a group when
    // its mean cosine to the members reaches tau.
    let near = vec![vec![(2, 0.8)], vec![(2, 0.7)], vec![(0, 0.8), (1, 0.7)]];
    let two = vec![vec![1], vec![0], vec![]];
    assert_eq!(average_linkage(&two, &near, Some(0.7)), vec![vec![0, 1, 2]]);
    assert_eq!(
        average_linkage(&two, &near, Some(0.8)),
        vec![vec![0, 1], vec![2]]
    );
}

#[test]
fn clauses_numbers_and_reader_address() {
    use transum::summary::facts::clauses;
    use transum::summary::similarity::{numbers, numbers_contradict, same_fact};
    assert_eq!(
        clauses("The highlight was the summit at the Vostochny cosmodrome, where the two leaders exchanged rifles and Putin accepted an invitation to North Korea."),
        [
            "The highlight was the summit at the Vostochny cosmodrome",
            "where the two leaders exchanged rifles",
            "and Putin accepted an invitation to North Korea."
        ]
    );
    // "Kim and Putin" is not two clauses.
    assert_eq!(clauses("Kim and Putin met on Wednesday.").len(), 1);
    // Units normalised; spelled-out counts of a unit of measure.
    assert_eq!(numbers("a crack 4 km long"), numbers("four kilometres"));
    assert!(numbers_contradict(
        &numbers("Inflation slowed to 3.2% in October."),
        &numbers("Inflation slowed to 2.9% in November.")
    ));
    assert!(!numbers_contradict(
        &numbers("shortly after 10 pm, a crack 4 km long"),
        &numbers("The fissure is four kilometres long.")
    ));
    // A shared figure in related wording is one fact; contradicting numbers
    // never are, however alike the words.
    let (a, b) = (
        numbers("3,700 residents were evacuated"),
        numbers("home to 3 700 people"),
    );
    assert!(same_fact(0.2, None, &a, &b, false));
    assert!(!same_fact(
        0.9,
        Some(0.95),
        &numbers("rose 3.2%"),
        &numbers("rose 2.9%"),
        true
    ));
    // Days and months, as words or as stems, are dates, never names.
    use transum::summary::similarity::is_calendar;
    assert!(is_calendar("Monday") && is_calendar("January") && is_calendar("januari"));
    assert!(!is_calendar("Grindavik"));
    // Page chrome that addresses the reader states no fact; a quote may.
    use transum::summary::states_fact;
    assert!(!states_fact("Your email address will not be published."));
    assert!(!states_fact("Sign up for our weekly briefing."));
    assert!(!states_fact("Do you have photos of the eruption?"));
    assert!(states_fact(
        "\"We will rebuild the town,\" the mayor said on Monday."
    ));
}
