#!/usr/bin/env python3
"""transum's GPU check, run on a GPU machine from the bundle that
scripts/gpu-check/bundle.sh makes (PyTorch, transformers and the CUDA 13
libraries there; no Rust, no network needed):

1. CUDA f32 parity: `transum translate --device cuda --dtype f32` on every
   fixture's greedy and beam-4 goldens (transformers' outputs); a mismatch
   counts against parity unless the golden's decision margin there is below
   1e-3 (greedy), where float rounding may legitimately flip a tie.
2. bf16 against f32: the same goldens with --dtype bf16 (share of outputs
   equal to f32's), and the opus-mt-shaped model's 200 sentences in f32 and
   bf16 (share of identical translations).
3. Throughput on the opus-mt-fr-en-shaped random model (200 sentences, exactly
   48 new tokens each): transum bf16 (its throughput bench, load excluded)
   against transformers bf16 generate, and CTranslate2 float16 when its wheel
   is installed, at batch 64 and 128, greedy and beam 4.

Writes gpu_check.json and gpu_check.md (one table) into --out (default: the
current directory). The CUDA libraries are found through LD_LIBRARY_PATH; the
script adds torch's nvidia/cu13/lib when it finds it.

    python3 scripts/gpu-check/gpu_check.py [--out DIR] [--skip-throughput]

`--device cpu --bin target/release` runs the parity part on a CPU build (a dry
run of the script itself).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "bin")
DEVICE = "cuda"
FIX = os.path.join(ROOT, "tests", "fixtures")
NEW_TOKENS = 48
CLI_SETTINGS = {"num_beams", "max_new_tokens", "min_new_tokens"}
sys.path.insert(0, os.path.join(ROOT, "benches", "compare"))


def cuda_env():
    """LD_LIBRARY_PATH with torch's CUDA 13 libraries (libcublas, libcudart, libcurand)."""
    env = dict(os.environ)
    try:
        import torch
        libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu13", "lib"))
        libs += glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "lib"))
    except ImportError:
        libs = []
    libs.append(os.path.join(ROOT, "lib"))  # the bundle's libcurand.so.10
    env["LD_LIBRARY_PATH"] = ":".join([os.path.abspath(p) for p in libs] + [env.get("LD_LIBRARY_PATH", "")])
    env["TRANSUM_EMBED_MODEL"] = "none"
    return env


def translate(model, lines, settings, dtype, src_lang=None):
    """Lines through `transum translate` on the device; one output line per input line."""
    args = [os.path.join(BIN, "transum"), "translate", "-", "--model", model, "--device", DEVICE,
            "--dtype", dtype, "--beams", str(settings["num_beams"]),
            "--max-new-tokens", str(settings["max_new_tokens"])]
    if "min_new_tokens" in settings:
        args += ["--min-new-tokens", str(settings["min_new_tokens"])]
    if src_lang:
        args += ["--source-lang", src_lang.split("_")[0][:2]]
    p = subprocess.run(args, input="\n".join(lines) + "\n", capture_output=True, text=True, env=cuda_env())
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr[-2000:]}")
    return p.stdout.rstrip("\n").split("\n")


def parity():
    """Every golden run with decoded outputs, on cuda in f32 and bf16."""
    out = []
    for path in sorted(glob.glob(os.path.join(FIX, "goldens", "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            g = json.load(f)
        model = os.path.join(FIX, "models", name)
        for run in g.get("runs", []):
            settings = run["settings"]
            # Runs the CLI can express: beams and exact lengths (the others
            # need library settings; the Rust parity suite covers them).
            if "max_new_tokens" not in settings or set(settings) - CLI_SETTINGS:
                continue
            outs = [o for o in run.get("outputs", []) if "decoded" in o and "text" in o and "\n" not in o["text"]]
            # One source language per call (M2M100's tokenizer is told it).
            langs = {o.get("src_lang") for o in outs}
            if not outs or len(langs) > 1:
                continue
            want = [o["decoded"] for o in outs]
            rec = {"fixture": name, "run": run["label"], "outputs": len(outs)}
            try:
                src = [o["text"] for o in outs]
                f32 = translate(model, src, settings, "f32", langs.pop())
                bf16 = translate(model, src, settings, "bf16", outs[0].get("src_lang"))
            except RuntimeError as e:
                rec["error"] = str(e)
                out.append(rec)
                continue
            bad = [i for i, (a, b) in enumerate(zip(f32, want)) if a != b]
            # A greedy mismatch where transformers' own top-2 margin is tiny is a tie, not a bug.
            ties = [i for i in bad if min(outs[i].get("gaps") or [1.0]) < 1e-3]
            rec.update({
                "f32_equal": len(outs) - len(bad),
                "f32_mismatch_at_ties": len(ties),
                "f32_parity": len(bad) == len(ties),
                "bf16_equal_to_f32": sum(a == b for a, b in zip(bf16, f32)),
            })
            out.append(rec)
    return out


def bench_transum(hf_dir, sentences, batch, beams):
    args = [os.path.join(BIN, "throughput"), "--model", hf_dir, "--batch", str(batch), "--beams", str(beams),
            "--device", DEVICE, "--dtype", "bf16", "--sentences", sentences, "--json"]
    p = subprocess.run(args, capture_output=True, text=True, env=cuda_env())
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return r["tokens"] / r["seconds"]


def bench_transformers(hf_dir, ids, batch, beams):
    import torch
    from transformers import GenerationConfig, MarianMTModel

    model = MarianMTModel.from_pretrained(hf_dir, torch_dtype=torch.bfloat16).to("cuda").eval()
    model.generation_config = GenerationConfig(
        num_beams=beams, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS, decoder_start_token_id=59513,
        eos_token_id=0, pad_token_id=59513, forced_eos_token_id=0, bad_words_ids=[[59513]])
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    tokens = 0
    torch.cuda.synchronize()
    t0 = time.time()
    with torch.no_grad():
        for s in range(0, len(order), batch):
            chunk = [ids[i] for i in order[s:s + batch]]
            n = max(map(len, chunk))
            inp = torch.tensor([c + [59513] * (n - len(c)) for c in chunk], device="cuda")
            mask = torch.tensor([[1] * len(c) + [0] * (n - len(c)) for c in chunk], device="cuda")
            out = model.generate(input_ids=inp, attention_mask=mask)
            tokens += int((out[:, 1:] != 59513).sum())
    torch.cuda.synchronize()
    return tokens / (time.time() - t0)


def bench_ct2(hf_dir, tokens, batch, beams):
    import ctranslate2  # noqa: F401 (absent: skipped by the caller)

    ct2_dir = os.path.join(os.path.dirname(hf_dir), "ct2-float16")
    if not os.path.exists(ct2_dir):
        subprocess.run(["ct2-transformers-converter", "--model", hf_dir, "--output_dir", ct2_dir,
                        "--quantization", "float16", "--force"], check=True)
    tr = ctranslate2.Translator(ct2_dir, device="cuda", compute_type="float16")
    t0 = time.time()
    res = tr.translate_batch(tokens, beam_size=beams, max_batch_size=batch, min_decoding_length=NEW_TOKENS,
                             max_decoding_length=NEW_TOKENS, return_end_token=True)
    secs = time.time() - t0
    return sum(len(r.hypotheses[0]) for r in res) / secs


def throughput(work):
    import compare  # the CPU comparison's model builder, so both measure one model
    from transformers import MarianTokenizer

    hf_dir = compare.build_hf_model(os.path.join(work, "hf"))
    sentences = os.path.join(ROOT, "sentences.json")
    with open(sentences, encoding="utf-8") as f:
        text = json.load(f)
    tok = MarianTokenizer.from_pretrained(hf_dir)
    ids = [tok(s)["input_ids"] for s in text]
    pieces = [tok.convert_ids_to_tokens(i) for i in ids]
    try:
        import ctranslate2  # noqa: F401
        have_ct2 = True
    except ImportError:
        have_ct2 = False
    rows = []
    for batch in (64, 128):
        for beams in (1, 4):
            r = {"batch": batch, "beams": beams}
            for name, fn in [("transum_bf16", lambda: bench_transum(hf_dir, sentences, batch, beams)),
                             ("transformers_bf16", lambda: bench_transformers(hf_dir, ids, batch, beams)),
                             ("ct2_float16", (lambda: bench_ct2(hf_dir, pieces, batch, beams)) if have_ct2 else None)]:
                if fn is None:
                    r[name] = None
                    continue
                try:
                    r[name] = round(fn(), 1)
                except Exception as e:  # one failing system must not lose the others' numbers
                    r[name] = None
                    r[name + "_error"] = str(e)[-500:]
            if r.get("transum_bf16") and r.get("transformers_bf16"):
                r["speedup_vs_transformers"] = round(r["transum_bf16"] / r["transformers_bf16"], 2)
            if r.get("transum_bf16") and r.get("ct2_float16"):
                r["speedup_vs_ct2"] = round(r["transum_bf16"] / r["ct2_float16"], 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def main():
    global BIN, DEVICE
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bin", default=BIN, help="the folder holding transum (and throughput)")
    args = ap.parse_args()
    BIN, DEVICE = os.path.abspath(args.bin), args.device
    os.makedirs(args.out, exist_ok=True)
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        gpu = "none (no nvidia-smi)"
    result = {"gpu": gpu, "parity": parity()}
    print(json.dumps(result["parity"], indent=1), flush=True)
    if not args.skip_throughput:
        result["throughput"] = throughput(os.path.join(args.out, "gpu-check-work"))
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"GPU: {gpu}", "",
             "| fixture | run | outputs | f32 = transformers | mismatches at ties | parity | bf16 = f32 |",
             "|---|---|---|---|---|---|---|"]
    for p in result["parity"]:
        lines.append(f"| {p['fixture']} | {p['run']} | {p['outputs']} | {p.get('f32_equal', 'error')} | "
                     f"{p.get('f32_mismatch_at_ties', '')} | {p.get('f32_parity', p.get('error', '')[:60])} | "
                     f"{p.get('bf16_equal_to_f32', '')} |")
    if result.get("throughput"):
        lines += ["", "| batch | beams | transum bf16 tok/s | transformers bf16 | CTranslate2 float16 | vs transformers | vs CT2 |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["throughput"]:
            lines.append(f"| {r['batch']} | {r['beams']} | {r['transum_bf16']} | {r['transformers_bf16']} | "
                         f"{r['ct2_float16']} | {r.get('speedup_vs_transformers', '')} | {r.get('speedup_vs_ct2', '')} |")
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = all(p.get("f32_parity") for p in result["parity"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
