//! One corpus over several processes: `run --shard I/N` into one shared
//! outputs directory, then `merge`. Three shards in parallel against one
//! single run (byte-identical translations and summary), a shard killed
//! with SIGKILL and rerun, a merge before every shard finished, the stable
//! assignment, and the scheduler's environment.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{assert_success, fixture_model, transum_env, TempDir};
use crate::run::{copy_corpus, manifest, run_args};

/// A corpus of 11 articles (the five, and six renamed copies), so that
/// each of three shards owns some.
fn corpus(dir: &Path) {
    let c = dir.join("corpus");
    copy_corpus(&c);
    let mut names: Vec<_> = std::fs::read_dir(&c)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for (i, p) in names.iter().cycle().take(6).enumerate() {
        std::fs::copy(p, c.join(format!("copy{i}.txt"))).unwrap();
    }
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("HF_HUB_OFFLINE", "1")]
}

fn args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = run_args(model);
    a.extend(extra);
    a
}

/// `merge` with the run's summary settings.
fn merge(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["merge", "--summarizer", "extractive"];
    a.extend(extra);
    transum_env(dir, &a, None, &env())
}

/// Translations and summary files, by name, with their bytes.
fn finals(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("outputs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".en.txt") || n.starts_with("summary."))
        .map(|n| {
            (
                n.clone(),
                std::fs::read(dir.join("outputs").join(&n)).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A manifest without timings, per-run token counts and shard records.
fn comparable(mut m: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for k in [
                    "seconds",
                    "tokens_per_second",
                    "translated_tokens",
                    "shards",
                ] {
                    o.remove(k);
                }
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut m);
    m
}

fn shard_manifest(dir: &Path, i: usize, n: usize) -> Value {
    let p = dir.join(format!("outputs/shards/{i}-of-{n}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn owned(dir: &Path, i: usize, n: usize) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| transum::shard::shard_of(f, n) == i)
        .collect();
    v.sort();
    v
}

/// The single run every sharded run must equal.
fn reference(model: &str) -> TempDir {
    let dir = TempDir::new("shard-ref");
    corpus(dir.path());
    assert_success(&transum_env(dir.path(), &args(model, &[]), None, &env()));
    dir
}

#[test]
fn three_parallel_shards_then_merge_equal_one_run() {
    let model = fixture_model("marian-a");
    let model = model.to_str().unwrap();
    let single = reference(model);
    let dir = TempDir::new("shards");
    corpus(dir.path());
    for i in 0..3 {
        assert!(
            !owned(dir.path(), i, 3).is_empty(),
            "shard {i} owns nothing"
        );
    }
    // Three processes at once on one outputs directory.
    let children: Vec<_> = (0..3)
        .map(|i| {
            let shard = format!("{i}/3");
            Command::new(env!("CARGO_BIN_EXE_transum"))
                .args(args(model, &["--shard", &shard]))
                .current_dir(dir.path())
                .env("HF_HUB_OFFLINE", "1")
                .env("TRANSUM_EMBED_MODEL", "none")
                .env_remove("SLURM_ARRAY_TASK_ID")
                .env_remove("JOB_COMPLETION_INDEX")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        assert_success(&c.wait_with_output().unwrap());
    }
    assert!(
        !dir.path().join("outputs/summary.md").exists(),
        "a shard wrote the summary"
    );
    for i in 0..3 {
        let m = shard_manifest(dir.path(), i, 3);
        assert_eq!(m["complete"], true);
        assert_eq!(m["shard"]["index"], i);
        assert_eq!(m["shard"]["source"], "--shard");
        let sources: Vec<&str> = m["articles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, owned(dir.path(), i, 3), "shard {i}'s articles");
        // The lock is released.
        assert!(!dir
            .path()
            .join(format!("outputs/shards/{i}-of-3.lock"))
            .exists());
    }
    assert_success(&merge(dir.path(), &[]));
    assert_eq!(finals(dir.path()), finals(single.path()));
    let merged = manifest(dir.path());
    assert_eq!(merged["shards"].as_array().unwrap().len(), 3);
    assert_eq!(comparable(merged), comparable(manifest(single.path())));
    // Merging again keeps the summary (incremental).
    assert_success(&merge(dir.path(), &[]));
    assert_eq!(manifest(dir.path())["summary"]["status"], "cached");
    // A plain run afterwards (e.g. to --prune) redoes nothing the shards did.
    assert_success(&transum_env(dir.path(), &args(model, &[]), None, &env()));
    let m = manifest(dir.path());
    assert!(m["articles"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["status"] == "cached"));
    assert_eq!(m["summary"]["status"], "cached");
}

#[test]
fn a_killed_shard_reruns_alone_without_redoing_its_finished_articles() {
    let model = fixture_model("marian-a");
    let model = model.to_str().unwrap();
    let single = reference(model);
    let dir = TempDir::new("shard-killed");
    corpus(dir.path());
    // The shard with the most articles is killed (SIGKILL) after its first.
    let victim = (0..3)
        .max_by_key(|&i| owned(dir.path(), i, 3).len())
        .unwrap();
    assert!(owned(dir.path(), victim, 3).len() >= 2);
    for i in (0..3).filter(|&i| i != victim) {
        let s = format!("{i}/3");
        assert_success(&transum_env(
            dir.path(),
            &args(model, &["--shard", &s]),
            None,
            &env(),
        ));
    }
    let s = format!("{victim}/3");
    let mut kill_env = env();
    kill_env.push(("TRANSUM_FAILPOINT", "after-article:1"));
    let out = transum_env(dir.path(), &args(model, &["--shard", &s]), None, &kill_env);
    assert_eq!(out.status.code(), None, "the shard must die by a signal");
    assert_eq!(shard_manifest(dir.path(), victim, 3)["complete"], false);

    // Merging now names the unfinished shard and exits 1.
    let out = merge(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("shard {victim} of 3")) && err.contains("incomplete"),
        "{err}"
    );
    assert!(!dir.path().join("outputs/manifest.json").exists());

    // Rerun alone: its lock (left by a dead process) is taken over, and the
    // article it finished is kept.
    assert_success(&transum_env(
        dir.path(),
        &args(model, &["--shard", &s]),
        None,
        &env(),
    ));
    let statuses: Vec<String> = shard_manifest(dir.path(), victim, 3)["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses[0], "cached", "{statuses:?}");
    assert!(statuses[1..].iter().all(|s| s == "ok"), "{statuses:?}");
    assert_success(&merge(dir.path(), &[]));
    assert_eq!(finals(dir.path()), finals(single.path()));
    let mut m = comparable(manifest(dir.path()));
    for a in m["articles"].as_array_mut().unwrap() {
        a["status"] = "ok".into();
    }
    assert_eq!(m, comparable(manifest(single.path())));
}

#[test]
fn merge_before_the_shards_ran_names_them() {
    let model = fixture_model("marian-a");
    let model = model.to_str().unwrap();
    let dir = TempDir::new("shard-early");
    corpus(dir.path());
    assert_success(&transum_env(
        dir.path(),
        &args(model, &["--shard", "1/3"]),
        None,
        &env(),
    ));
    let out = merge(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for missing in [0, 2] {
        assert!(
            err.contains(&format!("shard {missing} of 3")) && err.contains("no manifest"),
            "{err}"
        );
    }
    assert!(!err.contains("shard 1 of 3"), "{err}");
    // Every shard done; then an article arrives after its shard ran.
    for i in [0, 2] {
        let s = format!("{i}/3");
        assert_success(&transum_env(
            dir.path(),
            &args(model, &["--shard", &s]),
            None,
            &env(),
        ));
    }
    std::fs::copy(
        dir.path().join("corpus/copy0.txt"),
        dir.path().join("corpus/late.txt"),
    )
    .unwrap();
    let owner = transum::shard::shard_of("late.txt", 3);
    let out = merge(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("late.txt") && err.contains(&format!("--shard {owner}/3")),
        "{err}"
    );
    // Rerunning that shard picks it up (the others' work is kept).
    let s = format!("{owner}/3");
    assert_success(&transum_env(
        dir.path(),
        &args(model, &["--shard", &s]),
        None,
        &env(),
    ));
    // While a shard runs, neither a merge nor a plain run touches the outputs.
    let outputs = dir.path().join("outputs");
    let held = transum::shard::ShardLock::acquire(
        &outputs,
        &transum::shard::Shard { index: 2, count: 3 },
        false,
    )
    .unwrap();
    let out = merge(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard 2-of-3: running now"));
    let out = transum_env(dir.path(), &args(model, &[]), None, &env());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is being written by shard 2-of-3"));
    drop(held);
    assert_success(&merge(dir.path(), &[]));
}

#[test]
fn adding_an_article_moves_no_other() {
    let names: Vec<String> = (0..200).map(|i| format!("article-{i:03}.txt")).collect();
    for n in [2, 3, 7] {
        let before: Vec<usize> = names
            .iter()
            .map(|f| transum::shard::shard_of(f, n))
            .collect();
        // Assignment depends on the name alone: a corpus with more articles
        // (or fewer) assigns each remaining one the same way.
        let mut more = names.clone();
        more.push("new.txt".into());
        more.sort();
        for (f, s) in names.iter().zip(&before) {
            assert_eq!(transum::shard::shard_of(f, n), *s);
        }
        // And it spreads: no shard is empty or holds more than twice its share.
        for i in 0..n {
            let c = before.iter().filter(|&&s| s == i).count();
            assert!(
                c > 0 && c < 2 * names.len() / n,
                "{n} shards: shard {i} has {c}"
            );
        }
    }
    // Stable across versions: these values are part of the on-disk contract
    // (outputs of a sharded corpus stay where they are after an upgrade).
    assert_eq!(
        [
            transum::shard::shard_of("001_a.txt", 3),
            transum::shard::shard_of("lemonde.txt", 4),
            transum::shard::shard_of("x", 2),
        ],
        PINNED
    );
}

/// The assignments of three names (the first 8 bytes of sha256, big-endian,
/// modulo N), computed outside transum with Python's hashlib.
const PINNED: [usize; 3] = [0, 1, 0];

#[test]
fn the_scheduler_environment_picks_the_shard() {
    let model = fixture_model("marian-a");
    let model = model.to_str().unwrap();
    let dir = TempDir::new("shard-env");
    corpus(dir.path());
    let mut slurm = env();
    slurm.extend([
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_MAX", "3"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ]);
    let out = transum_env(dir.path(), &args(model, &[]), None, &slurm);
    assert_success(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shard 1 of 3") && err.contains("Slurm"),
        "{err}"
    );
    assert!(dir.path().join("outputs/shards/1-of-3.json").is_file());
    // Kubernetes: the index from the pod, the count from --shards.
    let mut k8s = env();
    k8s.push(("JOB_COMPLETION_INDEX", "0"));
    let out = transum_env(dir.path(), &args(model, &["--shards", "3"]), None, &k8s);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Kubernetes"));
    // Without --shards it is a setup error that says so.
    let out = transum_env(dir.path(), &args(model, &[]), None, &k8s);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards N"));
    // The flag wins over the environment.
    let out = transum_env(dir.path(), &args(model, &["--shard", "2/3"]), None, &slurm);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("from --shard"));
}

/// A real scheduler: a single-node Slurm cluster on localhost runs the array
/// and the dependent merge job (deploy/slurm/local-check.sh). Needs root and
/// the Debian packages slurm-wlm and munge, so it runs only when asked:
/// `cargo test --release -- --ignored slurm`.
#[test]
#[ignore = "needs root, slurm-wlm and munge: cargo test --release -- --ignored slurm"]
fn a_real_slurm_array_and_merge_equal_one_run() {
    let script = crate::harness::repo().join("deploy/slurm/local-check.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("3")
        .env("TRANSUM_BIN", env!("CARGO_BIN_EXE_transum"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("PASS"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
