"""Where a CamVid run's test score is lost: per sequence and split, and whether val-fitted class offsets carry over.

Two questions about a finished run's best.pt (``runs/bench/NAME``):

1. Fit or shift? The mIoU of each CamVid sequence in each split (train:
   0001TP, 0006R0, 0016E5; val: 0016E5; test: 0001TP, Seq05VD), scored in
   eval mode on whole frames like the test split. A model that scores no
   better on its own training frames than on val is underfitted; one that
   scores far lower on a test sequence than on the training frames of the
   same sequence is hit by the shift between them.
2. Is the val/test gap a class prior? One offset per class is added to the
   logits, fitted on val by coordinate ascent on val mIoU (a few rounds over
   a grid), then test is scored once with the offsets. Offsets that lift val
   but not test say that val is no proxy for test here.

    python benchmarks/camvid_diagnose.py camvid-fast-ema-nhwc-seed1 --threads 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from imseg.data.build import build_dataset
from imseg.engine.eval_run import eval_data_config
from imseg.engine.checkpoint import read_model_file
from imseg.engine.inference import infer_logits
from imseg.engine.predict import model_inference
from imseg.machine import machine_info, versions, write_record

CLASSES = 11
OFFSET_GRID = (-1.5, -1.0, -0.6, -0.3, -0.15, 0.15, 0.3, 0.6, 1.0, 1.5)  # divided by the round number
ROUNDS = 3


def confusion(truth: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    keep = truth != 255
    return torch.bincount(truth[keep] * CLASSES + pred[keep], minlength=CLASSES ** 2).reshape(CLASSES, CLASSES)


def iou(cm: torch.Tensor) -> torch.Tensor:
    cm = cm.double()
    return cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag()).clamp(min=1)


def sequence_of(path: Path) -> str:
    return Path(path).name.split("_")[0]  # CamVid frames are named SEQUENCE_FRAME.png


def split_logits(model, inference, ds, every: int, keep_logits: bool, subsample: int = 1):
    """Per-sequence confusion matrices of ``ds`` (every ``every``-th image) and, if asked, the logits of
    every ``subsample``-th pixel as [pixels, classes] float16 with their labels."""
    per_sequence: dict[str, torch.Tensor] = {}
    logits, labels = [], []
    with torch.no_grad():
        for i in range(0, len(ds), every):
            image, mask = ds[i]
            out = infer_logits(model, image[None], inference)[0]
            seq = sequence_of(ds.files[i][0])
            per_sequence[seq] = per_sequence.get(seq, 0) + confusion(mask, out.argmax(0))
            if keep_logits:
                logits.append(out[:, ::subsample, ::subsample].reshape(CLASSES, -1).T.half())
                labels.append(mask[::subsample, ::subsample].reshape(-1))
    stacked = (torch.cat(logits), torch.cat(labels)) if keep_logits else None
    return per_sequence, stacked


def offset_miou(logits: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor) -> float:
    keep = labels != 255
    pred = (logits[keep].float() + offsets).argmax(1)
    return iou(confusion(labels[keep], pred)).mean().item()


def fit_offsets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Per-class logit offsets by coordinate ascent on mIoU; the offsets, mIoU before and after."""
    offsets = torch.zeros(CLASSES)
    before = best = offset_miou(logits, labels, offsets)
    for round_ in range(1, ROUNDS + 1):
        for c in range(CLASSES):
            for step in OFFSET_GRID:
                trial = offsets.clone()
                trial[c] += step / round_
                score = offset_miou(logits, labels, trial)
                if score > best + 1e-6:
                    best, offsets = score, trial
    return offsets, before, best


def rows(per_sequence: dict[str, torch.Tensor], names: list[str]) -> dict[str, dict]:
    out = {}
    for seq, cm in sorted(per_sequence.items()):
        scores = iou(cm)
        out[seq] = {"mIoU": round(scores.mean().item(), 4),
                    "pixel_accuracy": round((cm.diag().sum() / cm.sum()).item(), 4),
                    "per_class_iou": {n: round(v, 4) for n, v in zip(names, scores.tolist())}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a run under --runs (runs/bench/NAME/checkpoints/best.pt)")
    parser.add_argument("--runs", default="runs/bench")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train-every", type=int, default=3, help="score every N-th training frame")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/NAME-diagnosis.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = Path(args.runs) / args.name / "checkpoints" / "best.pt"
    model, record = read_model_file(checkpoint)
    model.eval()
    cfg = eval_data_config(model, checkpoint, args.data_root)
    inference = model_inference(model)
    names = list(model.meta.class_names)
    result: dict = {"run": args.name, "checkpoint": str(checkpoint), "epoch": record.get("epoch")}
    val_seq, (val_logits, val_labels) = split_logits(model, inference, build_dataset(cfg, cfg.val_split, train=False),
                                                     1, True, subsample=2)
    test_seq, (test_logits, test_labels) = split_logits(model, inference,
                                                        build_dataset(cfg, cfg.test_split, train=False), 1, True)
    train_seq, _ = split_logits(model, inference, build_dataset(cfg, cfg.train_split, train=False),
                                args.train_every, False)
    result["per_sequence"] = {"train": rows(train_seq, names), "val": rows(val_seq, names),
                              "test": rows(test_seq, names)}
    offsets, val_before, val_after = fit_offsets(val_logits, val_labels)
    result["val_fitted_offsets"] = {
        "offsets": {n: round(v, 3) for n, v in zip(names, offsets.tolist())},
        "val_mIoU_every_2nd_pixel": {"without": round(val_before, 4), "with": round(val_after, 4)},
        "test_mIoU": {"without": round(offset_miou(test_logits, test_labels, torch.zeros(CLASSES)), 4),
                      "with": round(offset_miou(test_logits, test_labels, offsets), 4)},
    }
    result.update(command="python " + " ".join(sys.argv), machine=machine_info(probe=False), versions=versions())
    out = write_record(args.out or f"benchmarks/results/{args.name}-diagnosis.json", result)
    for split, seqs in result["per_sequence"].items():
        for seq, r in seqs.items():
            print(f"{split:5s} {seq:7s} mIoU {100 * r['mIoU']:.1f}  pixel acc {100 * r['pixel_accuracy']:.1f}")
    fitted = result["val_fitted_offsets"]
    print(f"val-fitted offsets: val {100 * val_before:.1f} -> {100 * val_after:.1f}, test "
          f"{100 * fitted['test_mIoU']['without']:.1f} -> {100 * fitted['test_mIoU']['with']:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
