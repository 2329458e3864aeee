//! Nightly-grade reliability: incremental reruns, resuming after a kill at
//! several points with outputs identical to an uninterrupted run, the outputs
//! lock, corrupt model files, and determinism.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{assert_success, fixture_model, transum, transum_env, TempDir};
use crate::run::{assert_no_partial_files, copy_corpus, manifest, run_args};

/// Every final output file (translations and summary) with its bytes, by name.
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("outputs"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".en.txt") || n.starts_with("summary."))
        .map(|n| {
            let bytes = std::fs::read(dir.join("outputs").join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    v.sort();
    v
}

/// The manifest without what may differ between identical runs: timings (and
/// how many tokens this run itself generated, which is what its tokens/s counts).
fn manifest_without_timings(dir: &Path) -> Value {
    let mut m = manifest(dir);
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("seconds");
                o.remove("tokens_per_second");
                o.remove("translated_tokens");
                for (_, x) in o.iter_mut() {
                    strip(x);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut m);
    m
}

fn statuses(dir: &Path) -> Vec<String> {
    manifest(dir)["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap().to_string())
        .collect()
}

fn run_in(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let model = fixture_model("marian-a");
    let mut args = run_args(model.to_str().unwrap());
    args.extend(extra);
    let mut all_env = vec![("HF_HUB_OFFLINE", "1")];
    all_env.extend(env);
    transum_env(dir, &args, None, &all_env)
}

fn fresh(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    copy_corpus(&dir.path().join("corpus"));
    dir
}

#[test]
fn reruns_are_incremental_and_force_redoes_everything() {
    let dir = fresh("incremental");
    assert_success(&run_in(dir.path(), &[], &[]));
    assert!(statuses(dir.path()).iter().all(|s| s == "ok"));
    assert_eq!(manifest(dir.path())["complete"], true);
    let first = outputs(dir.path());

    assert_success(&run_in(dir.path(), &[], &[]));
    assert!(statuses(dir.path()).iter().all(|s| s == "cached"));
    assert_eq!(manifest(dir.path())["summary"]["status"], "cached");
    assert_eq!(outputs(dir.path()), first);

    // One article changes: only it is translated again, and the summary is redone.
    let changed = dir.path().join("corpus/001_dae3dd2aefba3372.txt");
    let mut text = std::fs::read_to_string(&changed).unwrap();
    text.push_str("\nLe Kremlin n'a pas commenté.\n");
    std::fs::write(&changed, text).unwrap();
    assert_success(&run_in(dir.path(), &[], &[]));
    let s = statuses(dir.path());
    assert_eq!(s[1], "ok", "{s:?}");
    assert!(
        s.iter().enumerate().all(|(i, s)| i == 1 || s == "cached"),
        "{s:?}"
    );
    assert_eq!(manifest(dir.path())["summary"]["status"], "ok");

    // A damaged output is not trusted: that article is redone.
    std::fs::write(dir.path().join("outputs/000_9b90b2f7d3885cef.en.txt"), "x").unwrap();
    assert_success(&run_in(dir.path(), &[], &[]));
    assert_eq!(statuses(dir.path())[0], "ok");

    // Other settings, other translations.
    let model = fixture_model("marian-a");
    let mut args = run_args(model.to_str().unwrap());
    args[6] = "6"; // --max-new-tokens
    assert_success(&transum(dir.path(), &args, None));
    assert!(statuses(dir.path()).iter().all(|s| s == "ok"));

    assert_success(&transum(dir.path(), &args, None));
    assert!(statuses(dir.path()).iter().all(|s| s == "cached"));
    args.push("--force");
    assert_success(&transum(dir.path(), &args, None));
    assert!(statuses(dir.path()).iter().all(|s| s == "ok"));
    assert_eq!(manifest(dir.path())["summary"]["status"], "ok");
}

#[test]
fn killed_runs_resume_to_identical_outputs() {
    let reference = fresh("reference");
    assert_success(&run_in(reference.path(), &[], &[]));
    let want = outputs(reference.path());
    let want_manifest = manifest_without_timings(reference.path());

    for (point, done_before) in [
        ("after-article:2", 2),
        ("mid-write:002_3950d335cd70a6ef.en.txt", 2),
        ("mid-write:manifest.json", 0),
        ("before-summary", 5),
        ("mid-write:summary.json", 5),
    ] {
        let dir = fresh("killed");
        let out = run_in(dir.path(), &[], &[("TRANSUM_FAILPOINT", point)]);
        assert_eq!(
            out.status.code(),
            None,
            "{point}: the run must die by a signal"
        );
        // Whatever is there is whole: every final file equals the reference's.
        for (name, bytes) in outputs(dir.path()) {
            if name.starts_with("summary.") {
                continue; // an earlier summary would be whole too; none exists here
            }
            let reference = &want.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(&bytes, reference, "{point}: {name} is not whole");
        }
        // The rerun finishes the work without redoing what was recorded.
        let out = run_in(dir.path(), &[], &[]);
        assert_success(&out);
        let s = statuses(dir.path());
        assert_eq!(
            s.iter().filter(|s| *s == "cached").count(),
            done_before,
            "{point}: {s:?}"
        );
        assert_eq!(
            outputs(dir.path()),
            want,
            "{point}: outputs differ from an uninterrupted run"
        );
        assert_no_partial_files(dir.path());
        // Same manifest as the reference but for timings and which articles were cached.
        let mut m = manifest_without_timings(dir.path());
        for a in m["articles"].as_array_mut().unwrap() {
            a["status"] = "ok".into();
        }
        assert_eq!(m, want_manifest, "{point}: manifest");
    }
}

#[test]
fn a_run_killed_by_sigkill_resumes() {
    let reference = fresh("sigkill-ref");
    assert_success(&run_in(reference.path(), &[], &[]));
    let dir = fresh("sigkill");
    let model = fixture_model("marian-a");
    let mut args = run_args(model.to_str().unwrap());
    args[4] = "4"; // beam search: slower, so the kill lands mid-run
    let mut child = Command::new(env!("CARGO_BIN_EXE_transum"))
        .env("TRANSUM_EMBED_MODEL", "none")
        .args(&args)
        .current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the first article is recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let recorded = std::fs::read_to_string(dir.path().join("outputs/manifest.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|m| !m["articles"].as_array().unwrap().is_empty());
        if recorded {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_success(&transum(dir.path(), &args, None));
    assert_success(&transum(reference.path(), &args, None));
    assert_eq!(outputs(dir.path()), outputs(reference.path()));
    assert_no_partial_files(dir.path());
}

#[test]
fn two_runs_never_share_an_outputs_directory() {
    let dir = fresh("lock");
    std::fs::create_dir_all(dir.path().join("outputs")).unwrap();
    let held = transum::lock::OutputsLock::acquire(&dir.path().join("outputs"), false).unwrap();
    let out = run_in(dir.path(), &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {}", std::process::id())) && err.contains("--wait"),
        "{err}"
    );
    assert!(
        !dir.path().join("outputs/manifest.json").exists(),
        "nothing written"
    );

    // --wait queues behind the holder and runs once it is gone.
    let model = fixture_model("marian-a");
    let mut args = run_args(model.to_str().unwrap());
    args.push("--wait");
    let mut child = Command::new(env!("CARGO_BIN_EXE_transum"))
        .env("TRANSUM_EMBED_MODEL", "none")
        .args(&args)
        .current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it waits while the lock is held"
    );
    assert!(!dir.path().join("outputs/manifest.json").exists());
    drop(held);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(manifest(dir.path())["complete"], true);

    // A lock file left by a dead process (here: a pid that does not run) is no obstacle.
    std::fs::write(dir.path().join("outputs/.transum.lock"), "999999999\n").unwrap();
    assert_success(&run_in(dir.path(), &[], &[]));
}

#[test]
fn two_runs_give_byte_identical_outputs() {
    let a = fresh("det-a");
    let b = fresh("det-b");
    let model = fixture_model("marian-a");
    let mut args = run_args(model.to_str().unwrap());
    args[4] = "3"; // beam search
    assert_success(&transum(a.path(), &args, None));
    assert_success(&transum(b.path(), &args, None));
    assert_eq!(outputs(a.path()), outputs(b.path()));
    assert_eq!(
        manifest_without_timings(a.path()),
        manifest_without_timings(b.path())
    );
}

/// A copy of a fixture checkpoint to damage.
fn model_copy(name: &str, dir: &Path) -> std::path::PathBuf {
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture_model(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

#[test]
fn corrupt_model_files_are_named_with_the_fix() {
    let dir = fresh("corrupt");
    // Truncated weights.
    let m = model_copy("marian-a", dir.path());
    let w = m.join("model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&w)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let args = |m: &str| {
        vec![
            "run".to_string(),
            "--model".into(),
            m.to_string(),
            "--summarizer".into(),
            "extractive".into(),
        ]
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        transum(dir.path(), &refs, None)
    };
    let out = run(args(m.to_str().unwrap()));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.safetensors") && err.contains("transum download --force"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Garbage header.
    std::fs::write(&w, b"\x08\x00\x00\x00\x00\x00\x00\x00not json").unwrap();
    let out = run(args(m.to_str().unwrap()));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.safetensors") && !err.contains("panicked"),
        "{err}"
    );

    // A config that does not match the weights.
    let m = model_copy("marian-b", dir.path());
    let cfg = m.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    c["d_model"] = 64.into();
    std::fs::write(&cfg, c.to_string()).unwrap();
    let out = run(args(m.to_str().unwrap()));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pytorch_model.bin") && err.contains("config.json"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_removed_article_is_never_current_nor_summarized() {
    let dir = fresh("removed");
    assert_success(&run_in(dir.path(), &[], &[]));
    let gone = "002_3950d335cd70a6ef";
    let output = format!("{gone}.en.txt");
    std::fs::remove_file(dir.path().join(format!("corpus/{gone}.txt"))).unwrap();
    let check = |out: &std::process::Output| {
        assert_success(out);
        let m = manifest(dir.path());
        let sources: Vec<&str> = m["articles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources.len(), 4);
        assert!(!sources.iter().any(|s| s.starts_with(gone)), "{sources:?}");
        assert_eq!(m["summary"]["articles"], 4);
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("outputs/summary.json")).unwrap(),
        )
        .unwrap();
        let text = summary.to_string();
        assert!(!text.contains(gone), "the summary cites a removed article");
        m
    };
    // Kept on disk, listed as orphaned, and the run says how to remove it.
    let out = run_in(dir.path(), &[], &[]);
    let m = check(&out);
    assert_eq!(m["orphaned_outputs"], serde_json::json!([output]));
    assert!(dir.path().join("outputs").join(&output).is_file());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prune deletes them"));
    // Still listed by the next run, even one that redoes everything.
    let m = check(&run_in(dir.path(), &["--force"], &[]));
    assert_eq!(m["orphaned_outputs"], serde_json::json!([output]));
    // --prune deletes exactly it.
    let m = check(&run_in(dir.path(), &["--prune"], &[]));
    assert_eq!(m["orphaned_outputs"], serde_json::json!([]));
    assert!(!dir.path().join("outputs").join(&output).exists());
    assert_eq!(
        outputs(dir.path())
            .iter()
            .filter(|(n, _)| n.ends_with(".en.txt"))
            .count(),
        4
    );
}
