"""Cost of soft (probability) targets in ``F.cross_entropy``, as a share of a training step.

Mixing turns class indices into float ``(B, K)`` probabilities, so the loss switches from the
fused index path (``nll_loss`` on ``log_softmax``) to the probability path. This script times,
interleaved, forward+backward of ``F.cross_entropy(logits, target)`` on a fixed random ``(B, K)``
logits leaf tensor (``requires_grad=True``, gradient reset to None each call, as
``zero_grad(set_to_none=True)`` does) with

* index targets: ``(B,)`` int64 labels;
* soft targets: ``(B, K)`` float32 rows from MixUp-style blending of two one-hot rows;

at several class counts ``K``. It then times one training step (forward, backward, SGD step with
momentum) of ``torchvision.models.resnet18(num_classes=K)`` on ``B×3×32×32`` inputs with index
targets, and reports the soft−index difference as a percentage of that step.

Example:
    python benchmarks/bench_loss.py --step-repeats 3
    python benchmarks/bench_loss.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse

import _harness as H
import torch
import torch.nn.functional as F
import torchvision

THRESHOLD = 10.0  # percent of a step above which soft targets would be worth optimising


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--classes",
        default="10,100,1000",
        help="comma-separated class counts (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument(
        "--image-size", type=int, default=32, help="side of the step's square inputs (default: 32)"
    )
    parser.add_argument(
        "--step-repeats",
        type=int,
        default=5,
        help="interleaved rounds of the ResNet-18 training step (default: 5; slow on a CPU)",
    )
    H.add_common_args(parser, repeats=21, min_time=0.02)
    return parser.parse_args(argv)


def loss_contenders(
    k: int, batch_size: int, device: torch.device, generator: torch.Generator
) -> list[H.Contender]:
    logits = torch.randn(batch_size, k, generator=generator).to(device).requires_grad_()
    index = torch.randint(0, k, (batch_size,), generator=generator).to(device)
    partner = torch.randint(0, k, (batch_size,), generator=generator).to(device)
    lam = torch.rand(batch_size, 1, generator=generator).to(device)
    soft = torch.lerp(
        F.one_hot(partner, k).float(), F.one_hot(index, k).float(), lam
    )  # rows of λ·y_i + (1-λ)·y_j, summing to 1

    def step(target: torch.Tensor) -> None:
        logits.grad = None
        F.cross_entropy(logits, target).backward()

    return [
        H.Contender(f"index K={k}", lambda: step(index)),
        H.Contender(f"soft K={k}", lambda: step(soft)),
    ]


def step_contender(
    k: int, args: argparse.Namespace, device: torch.device, generator: torch.Generator
) -> H.Contender:
    model = torchvision.models.resnet18(num_classes=k).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.randn(shape, generator=generator).to(device)
    y = torch.randint(0, k, (args.batch_size,), generator=generator).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return H.Contender(f"resnet18 step K={k}", step)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = H.setup_device(args)
    timer = H.Timer(device)
    classes = [int(c) for c in args.classes.split(",") if c.strip()]
    generator = torch.Generator().manual_seed(args.seed)

    print("# bench_loss: soft vs index targets in F.cross_entropy\n")
    print(H.environment(device))
    print(
        f"- loss: {args.repeats} interleaved rounds, each measurement >= "
        f"{args.min_time * 1e3:g} ms; step: {args.step_repeats} rounds of one step each; "
        "medians per call"
    )

    losses = [c for k in classes for c in loss_contenders(k, args.batch_size, device, generator)]
    H.run_interleaved(losses, timer, args.repeats, args.min_time, args.seed)
    steps = [step_contender(k, args, device, generator) for k in classes]
    H.run_interleaved(steps, timer, args.step_repeats, 0.0, args.seed, warmup=1)
    loss = {c.name: c for c in losses}
    step = {c.name: c for c in steps}

    rows, extra_pct = [], {}
    for k in classes:
        index, soft, train = (
            loss[f"index K={k}"].median,
            loss[f"soft K={k}"].median,
            step[f"resnet18 step K={k}"].median,
        )
        extra_pct[k] = 100 * (soft - index) / train
        lo, hi = step[f"resnet18 step K={k}"].quartiles
        rows.append(
            [
                str(k),
                H.ms(index),
                H.ms(soft),
                H.ratio(soft, index),
                f"{(soft - index) * 1e3:+.3f}",
                f"{H.ms(train)} ({H.ms(lo)}–{H.ms(hi)})",
                f"{extra_pct[k]:+.2f} %",
            ]
        )
    headers = [
        "K",
        "index fwd+bwd ms",
        "soft fwd+bwd ms",
        "soft ÷ index",
        "soft − index ms",
        "resnet18 step ms (p25–p75)",
        "extra % of step",
    ]
    image = f"{args.batch_size}x3x{args.image_size}x{args.image_size}"
    print(f"\n### cross_entropy on ({args.batch_size}, K) logits; step = resnet18 on {image}\n")
    print(H.markdown_table(headers, rows, "rrrrrrr"))

    k_max = max(classes)
    verdict = "exceeds" if extra_pct[k_max] > THRESHOLD else "stays below"
    print(
        f"\nSummary: soft targets cost {extra_pct[k_max]:+.2f} % of a resnet18 training step at "
        f"{k_max} classes (batch {args.batch_size}), which {verdict} the {THRESHOLD:g} % mark; "
        "range over K: " + ", ".join(f"K={k}: {p:+.2f} %" for k, p in extra_pct.items()) + "."
    )


if __name__ == "__main__":
    main()
