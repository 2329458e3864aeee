//! The `transum translate` command, run as a user would.

use serde_json::Value;

use crate::harness::{assert_lines_eq, fixture_model, golden, transum, u32s, TempDir};

/// `transum translate INPUT -m marian-a` with the "greedy" golden run's settings,
/// plus `extra` flags; asserts success and returns stdout.
fn translate_greedy(
    dir: &std::path::Path,
    input: &str,
    extra: &[&str],
    stdin: Option<&str>,
) -> String {
    let model = fixture_model("marian-a");
    let mut args = vec![
        "translate",
        input,
        "-m",
        model.to_str().unwrap(),
        "--beams",
        "1",
        "--max-new-tokens",
        "24",
    ];
    args.extend(extra);
    let out = transum(dir, &args, stdin);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn greedy_golden(name: &str) -> Vec<(String, String)> {
    let g = golden(name);
    let run = g["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == "greedy")
        .unwrap()
        .clone();
    assert_eq!(run["settings"]["max_new_tokens"], Value::from(24));
    run["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["text"].as_str().unwrap().to_string(),
                o["decoded"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn translate_lines_keeps_line_structure_and_matches_goldens() {
    let dir = TempDir::new("lines");
    let pairs: Vec<(String, String)> = greedy_golden("marian-a").into_iter().take(6).collect();
    // Empty and whitespace-only lines stay empty; every other line is one unit.
    let input = format!(
        "{}\n\n{}\n   \n{}\n{}\n{}\n{}\n",
        pairs[0].0, pairs[1].0, pairs[2].0, pairs[3].0, pairs[4].0, pairs[5].0
    );
    std::fs::write(dir.path().join("in.txt"), &input).unwrap();
    let stdout = translate_greedy(dir.path(), "in.txt", &["--batch-tokens", "64"], None);
    let want = format!(
        "{}\n\n{}\n\n{}\n{}\n{}\n{}\n",
        pairs[0].1, pairs[1].1, pairs[2].1, pairs[3].1, pairs[4].1, pairs[5].1
    );
    assert_lines_eq("translate --segment lines", &want, &stdout);
}

#[test]
fn translate_reads_stdin_with_bom_and_crlf() {
    let dir = TempDir::new("stdin");
    let pairs = greedy_golden("marian-a");
    let input = format!("\u{feff}{}\r\n{}\r\n", pairs[0].0, pairs[1].0);
    let stdout = translate_greedy(dir.path(), "-", &[], Some(&input));
    assert_lines_eq(
        "stdin",
        &format!("{}\n{}\n", pairs[0].1, pairs[1].1),
        &stdout,
    );
}

#[test]
fn translate_sentences_joins_sentences_on_their_line() {
    let dir = TempDir::new("sentences");
    let pairs = greedy_golden("marian-a");
    // Two golden sentences on one line come back as their two translations on one line.
    let mut ending = pairs.iter().filter(|(s, _)| s.ends_with('.'));
    let (a, b) = (ending.next().unwrap(), ending.next().unwrap());
    let input = format!("{} {}\n", a.0, b.0);
    let stdout = translate_greedy(dir.path(), "-", &["--segment", "sentences"], Some(&input));
    assert_lines_eq("sentences", &format!("{} {}\n", a.1, b.1), &stdout);
}

#[test]
fn setup_errors_exit_2_and_say_what_to_do() {
    let dir = TempDir::new("errors");
    // A model directory without weights.
    let empty = dir.path().join("empty-model");
    std::fs::create_dir_all(&empty).unwrap();
    for f in ["config.json", "source.spm", "target.spm", "vocab.json"] {
        std::fs::copy(fixture_model("marian-a").join(f), empty.join(f)).unwrap();
    }
    let out = transum(
        dir.path(),
        &["translate", "-", "-m", empty.to_str().unwrap()],
        Some("Bonjour.\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty-model") && err.contains("pytorch_model.bin") && err.contains("hint"),
        "{err}"
    );

    // Zero threads.
    let out = transum(
        dir.path(),
        &["--threads", "0", "translate", "-"],
        Some("Bonjour.\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads must be at least 1"));
    // One thread gives the same translation as all cores.
    let m = fixture_model("marian-a");
    let args = [
        "translate",
        "-",
        "-m",
        m.to_str().unwrap(),
        "--beams",
        "2",
        "--max-new-tokens",
        "8",
    ];
    let all = transum(dir.path(), &args, Some("Le Kremlin a répondu.\n"));
    let mut one_args = vec!["--threads", "1"];
    one_args.extend(args);
    let one = transum(dir.path(), &one_args, Some("Le Kremlin a répondu.\n"));
    assert_eq!(one.status.code(), Some(0));
    assert_eq!(one.stdout, all.stdout);

    // A hub model not in the cache, offline.
    let out = transum(
        dir.path(),
        &[
            "translate",
            "-",
            "-m",
            "Helsinki-NLP/opus-mt-fr-en",
            "--offline",
        ],
        Some("Bonjour.\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("transum download Helsinki-NLP/opus-mt-fr-en"),
        "{err}"
    );

    // Invalid UTF-8 input names the file and the fix.
    std::fs::write(dir.path().join("latin1.txt"), b"caf\xe9\n").unwrap();
    let model = fixture_model("marian-a");
    let out = transum(
        dir.path(),
        &["translate", "latin1.txt", "-m", model.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("latin1.txt") && err.contains("UTF-8") && err.contains("iconv"),
        "{err}"
    );

    // A bad flag value is a usage error.
    let out = transum(
        dir.path(),
        &["translate", "-", "--segment", "paragraphs"],
        Some(""),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lines"));
}

#[test]
fn corrupt_and_mismatched_weights_name_the_tensor_or_file() {
    let dir = TempDir::new("corrupt");
    let src = fixture_model("marian-a");
    let bad = dir.path().join("model");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    // Weights of marian-c under marian-a's config: shapes disagree.
    std::fs::copy(
        fixture_model("marian-c").join("model.safetensors"),
        bad.join("model.safetensors"),
    )
    .unwrap();
    let out = transum(
        dir.path(),
        &["translate", "-", "-m", bad.to_str().unwrap()],
        Some("Bonjour.\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.safetensors")
            && err.contains("tensor `model.")
            && err.contains("expected"),
        "{err}"
    );

    // A truncated weight file.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let out = transum(
        dir.path(),
        &["translate", "-", "-m", bad.to_str().unwrap()],
        Some("Bonjour.\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.safetensors") && err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn pytorch_bin_checkpoint_loads_by_name() {
    // marian-b ships only pytorch_model.bin, like opus-mt-fr-en's main branch.
    let model = fixture_model("marian-b");
    assert!(!model.join("model.safetensors").exists() && model.join("pytorch_model.bin").exists());
    let g = golden("marian-b");
    let run = &g["runs"][0];
    let o = &run["outputs"][0];
    let dir = TempDir::new("bin");
    let out = transum(
        dir.path(),
        &[
            "translate",
            "-",
            "-m",
            model.to_str().unwrap(),
            "--beams",
            "1",
            "--max-new-tokens",
            "20",
            "--min-new-tokens",
            "6",
        ],
        Some(&format!("{}\n", o["text"].as_str().unwrap())),
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        o["decoded"].as_str().unwrap()
    );
    assert!(u32s(&o["ids"]).len() > 7);
}

#[test]
fn a_closed_stdout_ends_translate_quietly() {
    // `transum translate a.txt | head -1`: the reader leaves early.
    use std::io::Write;
    let dir = TempDir::new("pipe");
    let model = fixture_model("marian-a");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_transum"))
        .env("TRANSUM_EMBED_MODEL", "none")
        .args([
            "translate",
            "-",
            "-m",
            model.to_str().unwrap(),
            "--beams",
            "1",
        ])
        .args(["--max-new-tokens", "4"])
        .current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let lines = "Le Kremlin a répondu.\n".repeat(2000);
    let _ = child.stdin.take().unwrap().write_all(lines.as_bytes());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn device_and_dtype_flags_are_checked_before_any_work() {
    let dir = TempDir::new("device");
    let m = fixture_model("marian-a");
    let m = m.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "translate",
            "-",
            "-m",
            m,
            "--beams",
            "1",
            "--max-new-tokens",
            "6",
        ];
        a.extend(extra);
        transum(dir.path(), &a, Some("Le Kremlin a répondu.\n"))
    };
    // CUDA in a build without it: a setup error that says how to build it.
    if !cfg!(feature = "cuda") {
        for cmd in [
            vec!["translate", "-", "--device", "cuda"],
            vec!["run", "--device", "cuda:1"],
            vec!["summarize", "x.txt", "--device", "cuda"],
        ] {
            let out = transum(dir.path(), &cmd, Some(""));
            assert_eq!(out.status.code(), Some(2), "{cmd:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("built without CUDA") && err.contains("--features cuda"),
                "{err}"
            );
        }
    }
    for (flags, want) in [
        (vec!["--device", "tpu"], "cpu, cuda, cuda:N"),
        (vec!["--dtype", "f8"], "f32, f16 or bf16"),
        (
            vec!["--quantize", "q8_0", "--dtype", "bf16"],
            "f32 activations",
        ),
    ] {
        let out = run(&flags);
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{flags:?}: {err}");
    }
    // auto is the CPU here; f32 on the CPU is the default and the same run.
    let default = run(&[]);
    assert_eq!(default.status.code(), Some(0));
    assert_eq!(
        run(&["--device", "auto", "--dtype", "f32"]).stdout,
        default.stdout
    );
    assert_eq!(run(&["--device", "cpu"]).stdout, default.stdout);
    for dtype in ["f16", "bf16"] {
        assert_eq!(run(&["--dtype", dtype]).status.code(), Some(0), "{dtype}");
    }
}
