//! The hub download path, for real: a local HTTP server on 127.0.0.1 answers
//! hf-hub's resolve requests (ranged GET with ETag, X-Repo-Commit and
//! Content-Range), `transum download` fills models/, and a later
//! `run --offline` works with the server stopped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::harness::{assert_success, fixture_model, repo, transum, transum_env, TempDir};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves each `(repo id, dir)`'s files at the hub's resolve URLs until dropped.
struct HubServer {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HubServer {
    fn start(repos: Vec<(&'static str, PathBuf)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        serve(stream, &repos);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        HubServer {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn serve(mut stream: std::net::TcpStream, repos: &[(&'static str, PathBuf)]) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let mut range_start = 0usize;
    let mut range_end: Option<usize> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = r.trim().split_once('-').unwrap();
            range_start = a.parse().unwrap();
            range_end = b.parse().ok();
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let file = repos
        .iter()
        .find_map(|(id, dir)| {
            path.strip_prefix(&format!("/{id}/resolve/main/"))
                .map(|f| dir.join(f))
        })
        .filter(|p| p.is_file());
    let Some(file) = file else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let mut data = Vec::new();
    std::fs::File::open(&file)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    let end = range_end.unwrap_or(data.len() - 1).min(data.len() - 1);
    let body = &data[range_start..=end];
    let etag = transum::outputs::sha256_file(&file).unwrap();
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {range_start}-{end}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len(),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

#[test]
fn download_then_offline_run_without_the_server() {
    let dir = TempDir::new("hub");
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::copy(
        repo().join("corpus/000_9b90b2f7d3885cef.txt"),
        corpus.join("000_9b90b2f7d3885cef.txt"),
    )
    .unwrap();
    {
        let server = HubServer::start(vec![
            ("test-org/tiny-marian", fixture_model("marian-a")),
            ("test-org/tiny-bart", fixture_model("bart-a")),
        ]);
        let out = transum_env(
            dir.path(),
            &["download", "test-org/tiny-marian", "test-org/tiny-bart"],
            None,
            &[("HF_ENDPOINT", &server.url)],
        );
        assert_success(&out);
    }
    let snapshot = dir
        .path()
        .join("models/models--test-org--tiny-marian/snapshots")
        .join(COMMIT);
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "source.spm",
        "target.spm",
        "vocab.json",
        "tokenizer_config.json",
    ] {
        assert!(
            snapshot.join(f).exists(),
            "{f} downloaded into the hub cache layout"
        );
    }
    // The server is gone; the cache alone serves the run.
    let out = transum(
        dir.path(),
        &[
            "run",
            "--model",
            "test-org/tiny-marian",
            "--summary-model",
            "test-org/tiny-bart",
            "--offline",
            "--beams",
            "1",
            "--max-new-tokens",
            "8",
        ],
        None,
    );
    assert_success(&out);
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("outputs/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["models"][0]["id"], "test-org/tiny-marian");
    assert_eq!(m["models"][0]["revision"], "main");
    assert_eq!(m["models"][0]["resolved_revision"], COMMIT);
    assert_eq!(m["summary"]["model"]["id"], "test-org/tiny-bart");
    assert_eq!(m["summary"]["status"], "ok");
    assert!(m["summary"]["model"]["files"]["tokenizer.json"].is_string());
    assert!(dir
        .path()
        .join("outputs/000_9b90b2f7d3885cef.en.txt")
        .exists());

    // A cached file whose bytes no longer match the hub's sha256 (a disk
    // error, a truncated copy): named, with the fix; `download --force` repairs it.
    let weights = snapshot.join("model.safetensors");
    let blob = std::fs::canonicalize(&weights).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let run_offline = || {
        transum(
            dir.path(),
            &[
                "run",
                "--model",
                "test-org/tiny-marian",
                "--summarizer",
                "extractive",
                "--offline",
                "--beams",
                "1",
                "--max-new-tokens",
                "8",
            ],
            None,
        )
    };
    let out = run_offline();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.safetensors")
            && err.contains("sha256")
            && err.contains("transum download --force test-org/tiny-marian@main"),
        "{err}"
    );
    {
        let server = HubServer::start(vec![("test-org/tiny-marian", fixture_model("marian-a"))]);
        let out = transum_env(
            dir.path(),
            &["download", "--force", "test-org/tiny-marian"],
            None,
            &[("HF_ENDPOINT", &server.url)],
        );
        assert_success(&out);
    }
    let out = run_offline();
    assert_success(&out);

    // A model that was never downloaded: a clear error naming the file and the fix.
    let out = transum(
        dir.path(),
        &[
            "run",
            "--model",
            "test-org/other-model",
            "--offline",
            "--summarizer",
            "extractive",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.json") && err.contains("transum download test-org/other-model@main"),
        "{err}"
    );
}

#[test]
fn download_langs_fetches_exactly_what_those_languages_need() {
    let dir = TempDir::new("hub-langs");
    let server = HubServer::start(vec![
        ("Helsinki-NLP/opus-mt-de-en", fixture_model("marian-b")),
        ("Helsinki-NLP/opus-mt-mul-en", fixture_model("marian-c")),
    ]);
    // German has a pair model; Portuguese has none (the fallback); English needs none.
    let out = transum_env(
        dir.path(),
        &["download", "--langs", "de,pt,en"],
        None,
        &[("HF_ENDPOINT", &server.url)],
    );
    assert_success(&out);
    let mut got: Vec<String> = std::fs::read_dir(dir.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("models--"))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "models--Helsinki-NLP--opus-mt-de-en",
            "models--Helsinki-NLP--opus-mt-mul-en"
        ]
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("en: passes through"), "{err}");
}
