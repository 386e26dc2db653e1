"""CLIBD's contrastive stage as an engine task: align image, DNA and taxonomy-text embeddings.

The loss all-gathers features with gradients (:mod:`clibd_training.losses`), so every rank scores its
samples against the global batch; with ``grad_accum`` > 1 the engine accumulates by caching features
(:mod:`clibd_training.accumulation`), so the contrastive batch is batch_size × processes × grad_accum.
Validation follows the paper: per-rank micro/macro top-k accuracy of nearest keys for each query→key
modality pair, on seen and unseen species, and ``mean_top1`` picks ``best.pt``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from clibd_cli.errors import ClibdError
from clibd_cli.metrics import harmonic_mean, knn_accuracy
from clibd_cli.preprocess import ImagePreprocessing
from clibd_cli.schema import PAIRS  # the paper's query → key pairs, shared with clibd evaluate
from clibd_cli.sequences import RANKS, taxonomy_text
from clibd_cli.tokenizer import KmerTokenizer
from clibd_training.accumulation import scale_grad
from clibd_training.config import TrainConfig
from clibd_training.data import (
    ImageTransforms,
    Specimen,
    SpecimenDataset,
    build_label_maps,
    collate,
    load_specimens,
)
from clibd_training.distributed import Dist, gather_objects, use_bf16
from clibd_training.engine import CHECKPOINTS, Task
from clibd_training.losses import contrastive_loss
from clibd_training.models import ModelConfig, build_model
from clibd_training.text_tokenizer import load_text_tokenizer, train_text_tokenizer


class ContrastiveTask(Task):
    """Contrastive training of the CLIBD model on one rank."""

    couples_samples = True  # each sample is scored against the batch: accumulation caches features
    records = "training records"
    score = "mean_top1"
    higher_is_better = True

    def __init__(self, cfg: TrainConfig, output: Path, env: Dist) -> None:
        self.cfg, self.output, self.env = cfg, Path(output), env
        self.model_cfg = ModelConfig.from_dict(cfg.model)
        self.modalities = tuple(self.model_cfg.modalities)
        specimens = load_specimens(cfg.data.path)
        self.by_split: dict[str, list[Specimen]] = {}
        for s in specimens:
            self.by_split.setdefault(s.split, []).append(s)
        train = self._splits(cfg.data.train_splits, required=True)
        self.label_maps = build_label_maps(specimens)
        self.text_tokenizer = self._text_tokenizer(specimens) if "text" in self.modalities else None
        self.model = build_model(self.model_cfg, text_tokenizer=self.text_tokenizer).to(env.device)
        self.train_set = self._dataset(train, train=True)
        self.bf16 = use_bf16(cfg, env)

    # ------------------------------------------------------------------------------ data
    def _splits(self, names: list[str], required: bool = False) -> list[Specimen]:
        out = [s for name in names for s in self.by_split.get(name, [])]
        if required and not out:
            raise ClibdError(f"{self.cfg.data.path}: no records in splits {', '.join(names)} "
                             f"(found: {', '.join(sorted(self.by_split))}).")
        return out

    def _text_tokenizer(self, specimens: Sequence[Specimen]) -> Any:
        """The configured pretrained tokenizer, or one trained on this data's taxonomy by rank 0."""
        pretrained = self.model_cfg.text.pretrained
        if pretrained:
            return load_text_tokenizer(pretrained)
        folder = self.output / "text_tokenizer"
        if self.env.main and not (folder / "tokenizer.json").exists() and not (folder / "vocab.txt").exists():
            texts = [taxonomy_text(s.taxonomy) for s in specimens]
            train_text_tokenizer(texts, out_dir=folder)
        dist.barrier()
        return load_text_tokenizer(str(folder))

    def _dataset(self, specimens: Sequence[Specimen], train: bool) -> Dataset:
        transforms = None
        if "image" in self.modalities:
            spec = ImagePreprocessing.from_dict(self.cfg.data.image)
            transforms = ImageTransforms(spec)
            transforms = transforms.train if train else transforms.eval
        tokenizer = KmerTokenizer(self.model_cfg.dna.tokenizer_config())
        return SpecimenDataset(specimens, tokenizer, text_tokenizer=self.text_tokenizer, image_transform=transforms,
                               text_max_len=self.model_cfg.text.max_len, label_maps=self.label_maps)

    def _loader(self, dataset: Dataset, sampler: Sampler, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler,
                          num_workers=self.cfg.data.num_workers, collate_fn=collate,
                          pin_memory=self.env.device.type == "cuda", drop_last=drop_last)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.env.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------------------ the task
    def loader(self, sampler: Sampler) -> DataLoader:
        return self._loader(self.train_set, sampler, drop_last=True)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.features_loss(self.encode(model, self.to_device(batch)))

    def encode(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Embeddings per modality, plus ``has_image``/``has_dna`` masks and ``labels`` when the loss uses them.

        Everything per sample, so accumulation can cache and concatenate micro-batches
        (:mod:`clibd_training.accumulation`).
        """
        out = dict(model(batch))
        out.update({f"has_{m}": batch[f"has_{m}"] for m in ("image", "dna") if f"has_{m}" in batch and m in out})
        key = {"species": "species_index", "bin": "bin_index"}.get(self.cfg.positives)
        if key:
            out["labels"] = batch[key]
        return out

    def features_loss(self, features: dict[str, Tensor], passes: int = 1) -> tuple[Tensor, dict[str, Tensor]]:
        """The contrastive loss of :meth:`encode`'s output; ``passes`` > 1 when accumulating (see scale_grad)."""
        embeddings = {m: features[m] for m in self.modalities if m in features}
        masks = {m: features[f"has_{m}"] for m in embeddings if f"has_{m}" in features}
        scale = self.model.scale()
        if passes > 1:  # the temperature's full gradient arrives in each of the `passes` backward passes
            scale = scale_grad(scale, 1.0 / passes)
        return contrastive_loss(embeddings, scale, masks=masks, labels=features.get("labels"),
                                positives=self.cfg.positives)

    def after_step(self) -> None:
        self.model.clamp_logit_scale()

    def log_fields(self) -> dict[str, float]:
        return {"logit_scale": self.model.scale().item()}

    def checkpoint(self) -> dict[str, Any]:
        """What `clibd export` and `clibd evaluate` rebuild the model from, besides its weights."""
        return {"model_config": asdict(self.model_cfg), "label_maps": self.label_maps,
                "text_tokenizer": str(self.output / "text_tokenizer") if self.text_tokenizer is not None else None}

    def finish(self, save: Callable[[str], None]) -> None:
        """A run that never validated (max_steps inside the first epoch) still leaves a best.pt to export."""
        if not (self.output / CHECKPOINTS / "best.pt").exists():
            save("best.pt")

    # ------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def embed(self, specimens: Sequence[Specimen]) -> dict[str, np.ndarray]:
        """Embeddings of `specimens` for every modality, computed sharded and gathered on all ranks."""
        if not specimens:
            return {}
        dataset = self._dataset(specimens, train=False)
        sampler = DistributedSampler(dataset, num_replicas=self.env.world, rank=self.env.rank, shuffle=False,
                                     drop_last=False)
        self.model.eval()
        local: dict[str, list] = {"index": []}
        for batch in self._loader(dataset, sampler):
            batch = self.to_device(batch)
            with torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                features = self.model(batch)
            local["index"].append(batch["index"].cpu())
            for modality, value in features.items():
                local.setdefault(modality, []).append(value.float().cpu())
        self.model.train()
        shard = {k: torch.cat(v).numpy() for k, v in local.items()}
        gathered = gather_objects(shard, self.env)
        index = np.concatenate([g["index"] for g in gathered])
        _, first = np.unique(index, return_index=True)  # DistributedSampler pads with repeats
        return {k: np.concatenate([g[k] for g in gathered])[first] for k in shard if k != "index"}

    def validate(self) -> dict[str, float]:
        """The paper's micro/macro top-k per rank for each query→key modality pair, seen and unseen."""
        cfg = self.cfg
        keys = self._splits(cfg.data.key_splits)
        groups = {"seen": self._splits(cfg.data.val_seen_splits), "unseen": self._splits(cfg.data.val_unseen_splits)}
        if not keys or not any(groups.values()):
            return {}
        key_emb = self.embed(keys)
        key_labels = _labels_of(keys)
        summary: dict[str, float] = {}
        top1 = []
        for group, queries in groups.items():
            if not queries:
                continue
            query_emb = self.embed(queries)
            query_labels = _labels_of(queries)
            for q_mod, k_mod in PAIRS:
                if q_mod not in query_emb or k_mod not in key_emb:
                    continue
                qmask = _has(queries, q_mod)
                kmask = _has(keys, k_mod)
                if not qmask.any() or not kmask.any():
                    continue
                result = knn_accuracy(query_emb[q_mod][qmask], key_emb[k_mod][kmask],
                                      {r: v[qmask] for r, v in query_labels.items()},
                                      {r: v[kmask] for r, v in key_labels.items()})
                pair = f"{q_mod}_to_{k_mod}"
                for rank, values in result.items():
                    for name, value in values.items():
                        summary[f"{group}/{pair}/{rank}/{name}"] = value
                if k_mod != "text":
                    top1 += [result[r]["micro_top1"] for r in RANKS if result[r]["n"]]
        for q_mod, k_mod in PAIRS:
            pair = f"{q_mod}_to_{k_mod}"
            seen = summary.get(f"seen/{pair}/species/micro_top1")
            unseen = summary.get(f"unseen/{pair}/species/micro_top1")
            if seen is not None and unseen is not None:
                summary[f"harmonic/{pair}/species/micro_top1"] = harmonic_mean(seen, unseen)
        summary["mean_top1"] = float(np.mean(top1)) if top1 else float("nan")
        return summary


def _labels_of(specimens: Sequence[Specimen]) -> dict[str, np.ndarray]:
    return {rank: np.array([s.taxonomy.get(rank, "") for s in specimens], dtype=object) for rank in RANKS}


def _has(specimens: Sequence[Specimen], modality: str) -> np.ndarray:
    if modality == "image":
        return np.array([s.image is not None for s in specimens])
    if modality == "dna":
        return np.array([bool(s.sequence) for s in specimens])
    return np.ones(len(specimens), dtype=bool)
