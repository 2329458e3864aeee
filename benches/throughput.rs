//! Translation throughput on an opus-mt-fr-en-shaped model (the real config,
//! vocab 59,514, seeded random weights, no download): 200 corpus sentences,
//! exactly 48 new tokens each, batch 16 (and 32), greedy and beam 4.
//!
//! Run: `cargo bench --bench throughput` (add `-- --batch 16 --beams 1
//! [--quantize q8_0] [--device cuda --dtype bf16] [--sentences FILE.json]` for
//! one configuration; `-- --quantize q8_0` alone runs
//! every batch/beam configuration quantized; `-- --matmul` times the packed
//! f32 and q8_0 products, and candle's, on the model's matrix shapes, the
//! LM head's included). Each configuration runs in its own child process so that its
//! peak RSS is its own. Prints target tokens/s, peak RSS and load time.
//!
//! The source sentences are tokenized with the marian-a fixture tokenizer (ids
//! fit the big vocabulary); decode cost, which dominates, does not depend on it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use transum::bench::{opus_mt_fr_en_config, peak_rss_bytes, random_weights, OPUS_MT_FR_EN_CONFIG};
use transum::device::Placement;
use transum::generation::GenerationOverrides;
use transum::hub::{ModelFiles, ModelSpec};
use transum::Translator;

const NEW_TOKENS: usize = 48;
const SENTENCES: usize = 200;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Write the random opus-mt-shaped checkpoint once (target/bench-model).
fn bench_model() -> PathBuf {
    let dir = repo().join("target/bench-model");
    if dir.join("model.safetensors").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = repo().join("tests/fixtures/models/marian-a");
    for f in [
        "source.spm",
        "target.spm",
        "vocab.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("config.json"), OPUS_MT_FR_EN_CONFIG).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"bad_words_ids": [[59513]], "bos_token_id": 0, "decoder_start_token_id": 59513, "eos_token_id": 0,
            "forced_eos_token_id": 0, "max_length": 512, "num_beams": 4, "pad_token_id": 59513}"#,
    )
    .unwrap();
    let tensors = random_weights(&opus_mt_fr_en_config(), 42).unwrap();
    let tmp = dir.join("model.safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp).unwrap();
    std::fs::rename(tmp, dir.join("model.safetensors")).unwrap();
    dir
}

fn corpus_sentences() -> Vec<String> {
    let shared = repo().join("../shared/corpus");
    let dir = if shared.is_dir() {
        shared
    } else {
        repo().join("corpus")
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines() {
            out.extend(
                transum::text::split_sentences(line)
                    .into_iter()
                    .map(str::to_string),
            );
        }
    }
    // Cycle through the corpus to the fixed workload size.
    (0..SENTENCES).map(|i| out[i % out.len()].clone()).collect()
}

/// One configuration. `device`/`dtype`: `--device`, `--dtype` as the CLI takes
/// them (default: the CPU in f32); `sentences`: a JSON list of source
/// sentences instead of the corpus's (for a machine without the repository).
#[allow(clippy::too_many_arguments)]
fn run_one(
    dir: &Path,
    batch: usize,
    beams: usize,
    json: bool,
    quant: Option<&str>,
    device: Option<&str>,
    dtype: Option<&str>,
    sentences: Option<&str>,
) {
    let files = ModelFiles {
        dir: dir.to_path_buf(),
        weights: transum::weights::find_weight_file(dir).unwrap(),
        spec: ModelSpec::Local(dir.to_path_buf()),
    };
    let t0 = Instant::now();
    let overrides = GenerationOverrides {
        num_beams: Some(beams),
        max_new_tokens: Some(NEW_TOKENS),
        min_new_tokens: Some(NEW_TOKENS),
        ..Default::default()
    };
    let device = transum::device::DeviceChoice::parse(device.unwrap_or("cpu"))
        .and_then(|d| d.device())
        .unwrap_or_else(|e| panic!("{e}"));
    let placement = Placement::resolve(
        &device,
        dtype.map(|d| transum::device::parse_dtype(d).unwrap()),
        quant.map(|q| transum::device::parse_quant(q).unwrap()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut tr = Translator::load(&files, &placement, &overrides).unwrap();
    let load_s = t0.elapsed().as_secs_f64();
    tr.max_batch = batch;
    tr.batch_tokens = usize::MAX;
    let sentences = match sentences {
        Some(f) => serde_json::from_str::<Vec<String>>(&std::fs::read_to_string(f).unwrap())
            .unwrap()
            .into_iter()
            .cycle()
            .take(SENTENCES)
            .collect(),
        None => corpus_sentences(),
    };
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let t1 = Instant::now();
    let out = tr.translate(&refs).unwrap();
    let secs = t1.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|t| t.hypothesis.tokens.len()).sum();
    assert_eq!(
        tokens,
        SENTENCES * NEW_TOKENS,
        "every sentence gets exactly {NEW_TOKENS} new tokens"
    );
    let rss = peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64;
    if json {
        println!(
            "{{\"tokens\": {tokens}, \"seconds\": {secs}, \"load_seconds\": {load_s}, \"peak_rss_mib\": {rss}}}"
        );
        return;
    }
    println!(
        "{:<5} {} beams={beams} batch={batch:<3} {:>8.1} tok/s  {tokens} tokens in {secs:>6.2}s  peak RSS {rss:>6.0} MiB  load {load_s:.2}s",
        tr.precision(),
        tr.device_name(),
        tokens as f64 / secs
    );
}

/// `--matmul`: the packed f32 kernel (at the chosen `TRANSUM_CPU_ISA`)
/// and the q8_0 product against candle's gemm on opus-mt's products
/// (`transum::bench::MATMUL_SHAPES`), GFLOP/s of `x Wᵀ + b`, best of 5.
fn matmul_shapes() {
    use candle_core::{Device, Tensor};
    use transum::cpu::matmul::PackedMatrix;
    let int8 = transum::cpu::int8::kernel().unwrap();
    println!(
        "packed f32 ({}) vs candle gemm, and q8_0 ({} int8 kernel: {}), RAYON_NUM_THREADS={}",
        transum::cpu::isa().name(),
        int8.name(),
        int8.encoding(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into())
    );
    for (rows, n, k) in transum::bench::MATMUL_SHAPES {
        let (x, w, b) = transum::bench::matmul_operands(rows, n, k);
        let packed = PackedMatrix::pack(&w, n, k);
        let (xt, wt, bt) = (
            Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap(),
            Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(),
            Tensor::from_vec(b.clone(), n, &Device::Cpu).unwrap(),
        );
        let best = |f: &dyn Fn()| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let flops = 2.0 * (rows * n * k) as f64;
        let p = best(&|| {
            std::hint::black_box(packed.matmul_vec(&x, rows, Some(&b)));
        });
        let c = best(&|| {
            let y = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .broadcast_add(&bt)
                .unwrap();
            std::hint::black_box(y);
        });
        let q8 = PackedMatrix::quantize_q8_0(&w, n, k).expect("k is a multiple of 32");
        let q = best(&|| {
            std::hint::black_box(q8.matmul_vec(&x, rows, Some(&b)));
        });
        println!(
            "{rows:>4} x {n:>5} x {k:>4}  packed {:>6.1} GFLOP/s  candle {:>6.1} GFLOP/s  q8_0 {:>6.1} GOP/s",
            flops / p / 1e9,
            flops / c / 1e9,
            flops / q / 1e9
        );
    }
}

fn main() {
    transum::device::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse::<usize>().unwrap())
    };
    let _ = Path::new("");
    if args.iter().any(|a| a == "--print-sentences") {
        println!("{}", serde_json::to_string(&corpus_sentences()).unwrap());
        return;
    }
    if args.iter().any(|a| a == "--matmul") {
        matmul_shapes();
        return;
    }
    // --model DIR: a checkpoint saved elsewhere (benches/compare uses transformers' own save).
    let dir = match args.iter().position(|a| a == "--model") {
        Some(i) => PathBuf::from(&args[i + 1]),
        None => bench_model(),
    };
    let quant = args
        .iter()
        .position(|a| a == "--quantize")
        .map(|i| args[i + 1].clone());
    let text = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    if let (Some(batch), Some(beams)) = (arg("--batch"), arg("--beams")) {
        run_one(
            &dir,
            batch,
            beams,
            args.iter().any(|a| a == "--json"),
            quant.as_deref(),
            text("--device").as_deref(),
            text("--dtype").as_deref(),
            text("--sentences").as_deref(),
        );
        return;
    }
    println!(
        "transum throughput: opus-mt-fr-en shape, {SENTENCES} sentences x {NEW_TOKENS} new tokens, RAYON_NUM_THREADS={}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into())
    );
    let exe = std::env::current_exe().unwrap();
    for (batch, beams) in [(16, 1), (16, 4), (32, 1), (32, 4)] {
        let mut cmd = Command::new(&exe);
        cmd.args(["--batch", &batch.to_string(), "--beams", &beams.to_string()]);
        if let Some(q) = &quant {
            cmd.args(["--quantize", q]);
        }
        let status = cmd.status().unwrap();
        assert!(status.success());
    }
}
