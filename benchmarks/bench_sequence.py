"""Sequence models: tokens/s of a Transformer training step, of greedy decoding with and without the
key/value cache, and of canon's LSTM (written from the gates, and fused) beside ``torch.nn.LSTM``.

All timings are medians over ``--repeats`` runs after warm-up, in one process, on the same thread
count; on shared machines read the ratios, not the absolute figures.

    python benchmarks/bench_sequence.py                       # transformer_small, defaults below
    python benchmarks/bench_sequence.py --batch-size 16 --decode-length 20 --repeats 3   # quick
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

import canon
from canon.layers import LSTM
from canon.losses import cross_entropy
from canon.models.sequence.decoding import greedy_search


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_batch(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    tokens = torch.randint(4, vocab, (batch, length), generator=generator)
    tokens[:, 0] = 1  # <s>
    return tokens


def bench_transformer(args) -> None:
    torch.manual_seed(0)
    model = canon.create_model(args.model, src_vocab_size=args.vocab_size, tgt_vocab_size=args.vocab_size)
    generator = torch.Generator().manual_seed(0)
    src = random_batch(args.batch_size, args.src_len, args.vocab_size, generator)
    tgt = random_batch(args.batch_size, args.tgt_len + 1, args.vocab_size, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

    def train_step():
        logits = model(src, tgt[:, :-1])
        loss = cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=0, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    seconds = median_seconds(train_step, args.repeats)
    target_tokens = args.batch_size * args.tgt_len
    print(f"| {args.model} training step (forward, label-smoothed loss, backward, Adam) | "
          f"{target_tokens / seconds:,.0f} target tokens/s | {seconds * 1000:.1f} ms/step |")

    decode_src = src[:args.decode_batch_size]
    results = {}
    for use_cache in (True, False):
        hypotheses = []

        def decode():
            hypotheses[:] = greedy_search(model, decode_src, max_length=args.decode_length, use_cache=use_cache)

        seconds = median_seconds(decode, args.repeats)
        generated = sum(len(h.tokens) + 1 for h in hypotheses)  # + the end-of-sentence step
        results[use_cache] = (generated / seconds, hypotheses)
        label = "with" if use_cache else "without"
        print(f"| {args.model} greedy decoding {label} the key/value cache | {generated / seconds:,.0f} tokens/s | "
              f"{seconds * 1000:.1f} ms for {generated} tokens |")
    same = [h.tokens for h in results[True][1]] == [h.tokens for h in results[False][1]]
    print(f"| cache speed-up (same tokens: {same}) | {results[True][0] / results[False][0]:.2f}x | |")


def bench_lstm(args) -> None:
    torch.manual_seed(0)
    hidden, layers = args.lstm_hidden, 2
    loop = LSTM(hidden, hidden, num_layers=layers, batch_first=True)
    fused = LSTM(hidden, hidden, num_layers=layers, batch_first=True, fused=True)
    reference = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
    fused.load_state_dict(loop.state_dict())
    reference.load_state_dict(loop.state_dict())
    x = torch.randn(args.batch_size, args.src_len, hidden)
    tokens = args.batch_size * args.src_len
    rates = {}
    for name, module in (("torch.nn.LSTM (fused kernel)", reference), ("canon LSTM fused=True", fused),
                         ("canon LSTM from the gates", loop)):
        def step():
            output, _ = module(x)
            output.sum().backward()

        seconds = median_seconds(step, args.repeats)
        rates[name] = tokens / seconds
        print(f"| {name}: forward + backward, {layers} layers, hidden {hidden} | {tokens / seconds:,.0f} tokens/s | "
              f"{seconds * 1000:.1f} ms |")
    torch_rate = rates["torch.nn.LSTM (fused kernel)"]
    print(f"| from the gates / torch.nn.LSTM | {rates['canon LSTM from the gates'] / torch_rate:.2f}x | |")
    print(f"| canon fused=True / torch.nn.LSTM | {rates['canon LSTM fused=True'] / torch_rate:.2f}x | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="transformer_small")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--src-len", type=int, default=20)
    parser.add_argument("--tgt-len", type=int, default=20)
    parser.add_argument("--decode-batch-size", type=int, default=16)
    parser.add_argument("--decode-length", type=int, default=40, help="max_length for greedy decoding")
    parser.add_argument("--lstm-hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch_size}, "
          f"source/target length {args.src_len}/{args.tgt_len}, vocabulary {args.vocab_size}")
    print("| what | throughput | time |")
    print("|---|---:|---:|")
    bench_transformer(args)
    bench_lstm(args)


if __name__ == "__main__":
    main()
