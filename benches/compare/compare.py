#!/usr/bin/env python3
"""Side-by-side throughput: transformers fp32, CTranslate2 (float32, int8) and transum.

Builds an opus-mt-fr-en-shaped Marian model (the real config, vocab 59,514,
seeded random weights) with transformers, saves it, converts it for CTranslate2,
then runs every system on the identical workload in one run on this machine:
200 corpus sentences, exactly 48 new tokens each, batch 16, greedy and beam 4,
2 threads. Each measurement runs in its own process, so peak RSS is its own.
Load time is excluded from tokens/s.

Not run in CI. Usage, from the repository root:

    pip install -r benches/compare/requirements.txt
    cargo build --release --bench throughput
    python3 benches/compare/compare.py [--systems transformers,ct2-float32,ct2-int8,transum-f32,transum-q8_0]
        [--beams 1,4] [--rounds 5]

The machine this was tuned on varies by 10-30% between runs of the same
binary (other tenants of the host), so `--rounds N` repeats every system N
times, interleaved, and reports the median and range of tok/s and of each
round's ratios.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(REPO, "target", "compare")
FIXTURE = os.path.join(REPO, "tests", "fixtures", "models", "marian-a")
NEW_TOKENS = 48
SENTENCES = 200
THREADS = 2


def sentences():
    """The same 200 sentences transum's bench uses (its splitter, cycled)."""
    out = subprocess.run(
        [bench_binary(), "--print-sentences"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def bench_binary():
    cands = sorted(glob.glob(os.path.join(REPO, "target", "release", "deps", "throughput-*")), key=os.path.getmtime)
    cands = [c for c in cands if os.access(c, os.X_OK) and not c.endswith(".d")]
    if not cands:
        sys.exit("build transum's bench first: cargo build --release --bench throughput")
    return cands[-1]


def build_model():
    """Save the model (transformers layout, vocab padded to 59,514) and CT2 conversions."""
    hf_dir = build_hf_model(os.path.join(WORK, "hf"))
    for quant in ["float32", "int8"]:
        out = os.path.join(WORK, f"ct2-{quant}")
        if not os.path.exists(out):
            subprocess.run(["ct2-transformers-converter", "--model", hf_dir, "--output_dir", out,
                            "--quantization", quant, "--force"], check=True)
    return hf_dir


def build_hf_model(hf_dir):
    """The opus-mt-fr-en-shaped random model in transformers' layout, saved once in hf_dir."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    if os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        return hf_dir
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(FIXTURE, "vocab.json"), encoding="utf-8") as f:
        small = json.load(f)
    # The fixture vocabulary (ids < 899) followed by filler pieces up to the real size.
    vocab = {p: i for p, i in small.items() if p != "<pad>"}
    while len(vocab) < 59513:
        vocab[f"\u2581filler{len(vocab)}"] = len(vocab)
    vocab["<pad>"] = 59513
    with open(os.path.join(hf_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    for name in ["source.spm", "target.spm", "tokenizer_config.json"]:
        with open(os.path.join(FIXTURE, name), "rb") as src, open(os.path.join(hf_dir, name), "wb") as dst:
            dst.write(src.read())
    # tokenizer_config names the fixture's pad id; drop added_tokens_decoder so ids come from vocab.json.
    cfg_path = os.path.join(hf_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    tcfg.pop("added_tokens_decoder", None)
    with open(cfg_path, "w") as f:
        json.dump(tcfg, f)
    config = MarianConfig(
        vocab_size=59514, decoder_vocab_size=59514, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        activation_function="swish", max_position_embeddings=512, scale_embedding=True,
        pad_token_id=59513, decoder_start_token_id=59513, eos_token_id=0, bos_token_id=0, forced_eos_token_id=0,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    model.save_pretrained(hf_dir)
    return hf_dir


def run_transformers(hf_dir, ids, beams, batch):
    import torch
    from transformers import GenerationConfig, MarianMTModel

    torch.set_num_threads(THREADS)
    t0 = time.time()
    model = MarianMTModel.from_pretrained(hf_dir).eval()
    load = time.time() - t0
    gc = GenerationConfig(num_beams=beams, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS,
                          decoder_start_token_id=59513, eos_token_id=0, pad_token_id=59513,
                          forced_eos_token_id=0, bad_words_ids=[[59513]])
    model.generation_config = gc
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    tokens = 0
    t0 = time.time()
    with torch.no_grad():
        for s in range(0, len(order), batch):
            chunk = [ids[i] for i in order[s:s + batch]]
            n = max(map(len, chunk))
            inp = torch.tensor([c + [59513] * (n - len(c)) for c in chunk])
            mask = torch.tensor([[1] * len(c) + [0] * (n - len(c)) for c in chunk])
            out = model.generate(input_ids=inp, attention_mask=mask)
            tokens += int((out[:, 1:] != 59513).sum())
    return tokens, time.time() - t0, load


def run_ct2(ct2_dir, beams, batch, compute_type):
    import ctranslate2

    # Token strings were written by the parent, so this process imports only ctranslate2.
    with open(os.path.join(WORK, "tokens.json"), encoding="utf-8") as f:
        src = json.load(f)
    t0 = time.time()
    tr = ctranslate2.Translator(ct2_dir, device="cpu", compute_type=compute_type, inter_threads=1,
                                intra_threads=THREADS)
    load = time.time() - t0
    t0 = time.time()
    res = tr.translate_batch(src, beam_size=beams, max_batch_size=batch, min_decoding_length=NEW_TOKENS,
                             max_decoding_length=NEW_TOKENS, return_end_token=True)
    secs = time.time() - t0
    tokens = sum(len(r.hypotheses[0]) for r in res)
    return tokens, secs, load


def run_transum(hf_dir, beams, batch, dtype):
    quant = [] if dtype == "f32" else ["--quantize", dtype]
    out = subprocess.run([bench_binary(), "--model", hf_dir, "--batch", str(batch), "--beams", str(beams),
                          "--json"] + quant, check=True, capture_output=True, text=True,
                         env={**os.environ, "RAYON_NUM_THREADS": str(THREADS)}).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["tokens"], r["seconds"], r["load_seconds"], r["peak_rss_mib"]


def peak_rss_mib():
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    fork+exec, so a child would inherit the parent's peak (torch loaded)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def system_needs_ids(system):
    return system == "transformers"


def child(args):
    """Run one system/config and print a JSON line (peak RSS comes from the parent)."""
    hf_dir = os.path.join(WORK, "hf")
    ids = None
    if system_needs_ids(args.child):
        with open(os.path.join(WORK, "ids.json")) as f:
            ids = json.load(f)
    system, beams, batch = args.child, args.beams, args.batch
    if system == "transformers":
        tokens, secs, load = run_transformers(hf_dir, ids, beams, batch)
        rss = None
    elif system.startswith("ct2-"):
        ct = system[4:]
        tokens, secs, load = run_ct2(os.path.join(WORK, f"ct2-{ct}"), beams, batch, ct)
        rss = None
    else:
        tokens, secs, load, rss = run_transum(hf_dir, beams, batch, system.split("-")[1])
    if not system.startswith("transum"):
        rss = peak_rss_mib()
    print(json.dumps({"tokens": tokens, "seconds": secs, "load": load, "rss": rss}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--systems", default="transformers,ct2-float32,ct2-int8,transum-f32,transum-q8_0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--beams", default="1,4")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every system this many times, interleaved; report medians and ranges")
    ap.add_argument("--child")
    args, _ = ap.parse_known_args()
    if args.child:
        args.beams = int(args.beams)
        return child(args)
    os.makedirs(WORK, exist_ok=True)
    hf_dir = build_model()
    from transformers import MarianTokenizer
    tok = MarianTokenizer.from_pretrained(hf_dir)
    ids = [tok(s)["input_ids"] for s in sentences()]
    with open(os.path.join(WORK, "ids.json"), "w") as f:
        json.dump(ids, f)
    with open(os.path.join(WORK, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump([tok.convert_ids_to_tokens(i) for i in ids], f, ensure_ascii=False)
    systems = args.systems.split(",")
    # runs[(system, beams)]: one result per round. Rounds interleave the
    # systems (a, b, a, b, ...) so that a slow spell of a shared machine falls
    # on all of them, and each round's ratios compare runs minutes apart.
    runs = {}
    for beams in [int(b) for b in args.beams.split(",")]:
        for rnd in range(args.rounds):
            for system in systems:
                p = subprocess.run([sys.executable, __file__, "--child", system, "--beams", str(beams),
                                    "--batch", str(args.batch)], check=True, capture_output=True, text=True)
                r = json.loads(p.stdout.strip().splitlines()[-1])
                r["tps"] = r["tokens"] / r["seconds"]
                runs.setdefault((system, beams), []).append(r)
                print(f"{system:<14} beams={beams} round {rnd + 1}/{args.rounds} {r['tps']:8.1f} tok/s",
                      file=sys.stderr, flush=True)
    print(f"\n{SENTENCES} sentences x {NEW_TOKENS} new tokens, batch {args.batch}, {THREADS} threads, "
          f"{args.rounds} round(s)" + (": medians [min-max]" if args.rounds > 1 else ""))
    print(f"{'system':<14} {'beams':>5} {'tokens':>7} {'tok/s':>20} {'load s':>7} {'peak RSS MiB':>13}"
          f"  ratio vs ct2-float32 / ct2-int8")

    def spread(xs, fmt):
        xs = sorted(xs)
        med = xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
        return fmt.format(med) if len(xs) == 1 else (fmt.format(med) + " [" + fmt.format(xs[0]) + "-"
                                                     + fmt.format(xs[-1]) + "]")

    for (system, beams), rs in runs.items():
        def ratios(ref):
            # Per round: this system's run against the reference's run of the same round.
            return [a["tps"] / b["tps"] for a, b in zip(rs, runs[(ref, beams)])] if (ref, beams) in runs else None
        rat = [ratios(ref) for ref in ("ct2-float32", "ct2-int8")]
        rtxt = " / ".join("nan" if r is None else spread(r, "{:.2f}") for r in rat)
        print(f"{system:<14} {beams:>5} {rs[0]['tokens']:>7} {spread([r['tps'] for r in rs], '{:.1f}'):>20} "
              f"{spread([r['load'] for r in rs], '{:.2f}'):>7} {spread([r['rss'] for r in rs], '{:.0f}'):>13}  {rtxt}")

if __name__ == "__main__":
    main()
