"""One typed configuration for a k-fold salt-segmentation run.

The built-in defaults are the embedded default run: sized for a 2-core laptop and the generated data
(a narrow ResNet34 U-Net, 3 folds, 4 epochs). configs/tgs.yaml holds the competition recipe and
configs/cpu.yaml a CPU preset for the real data.

Frozen dataclasses, loadable from YAML or JSON, overridable with dotted ``key=value`` strings, and
saved beside every checkpoint and result so that a resume or a reproduction rebuilds exactly the
same run. Any unknown key or bad value raises ``ValueError`` naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

ENCODERS = ("resnet18", "resnet34")
SCHEDULES = ("constant", "step", "cosine", "cyclic", "onecycle")
OPTIMIZERS = ("adam", "sgd")
PAD_MODES = ("reflect", "replicate")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
STEMS = ("imagenet", "full")
HEAD_KERNELS = (1, 3)
EMPTY_RULES = ("gate", "product")


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "resnet34"  # resnet18 | resnet34, torchvision parameter names
    width: float = 0.125  # channel multiplier: 1.0 = the real ResNet widths (configs/tgs.yaml)
    stem: str = "imagenet"  # imagenet: 7x7 stride-2 conv1 (layer1 at H/2) | full: 3x3 stride-1 (layer1 at H)
    scse: bool = True  # concurrent spatial and channel squeeze & excitation in the decoder
    hypercolumn: bool = True  # concatenate every upsampled decoder output before the final conv
    empty_head: bool = True  # image-level "mask is empty" classifier on the deepest features
    deep_supervision: bool = False  # extra BCE on each decoder stage's own logits
    # empty head: 0 = one Linear on the pooled deepest features; N = GAP -> Linear(N) -> ELU -> Linear
    # (the 1st-place TGS classifier used N = 64)
    empty_hidden: int = 0
    head_kernel: int = 3  # kernel of the head's first conv over the hypercolumn: 3 | 1 (fewer MACs)
    dropout: float = 0.0  # before the final conv and in the empty head
    # local torchvision ResNet state_dict file; never downloaded; it fits width 1.0 only
    encoder_weights: str | None = None

    def validate(self) -> None:
        _choice("model.encoder", self.encoder, ENCODERS)
        _choice("model.stem", self.stem, STEMS)
        _check("model.width", self.width, 0 < self.width <= 4, "a multiplier in (0, 4]")
        _check("model.dropout", self.dropout, 0 <= self.dropout < 1, "a probability in [0, 1)")
        _check("model.empty_hidden", self.empty_hidden, self.empty_hidden >= 0, ">= 0 (0 = one Linear)")
        _choice("model.head_kernel", self.head_kernel, HEAD_KERNELS)
        if self.encoder_weights is not None and not Path(self.encoder_weights).is_file():
            raise ValueError(
                f"model.encoder_weights={self.encoder_weights!r}: no such file; expected a local "
                "torchvision ResNet state_dict (.pth), nothing is downloaded"
            )


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"  # constant | step | cosine (warm restarts) | cyclic (triangular2) | onecycle
    lr: float = 3e-3  # base lr: constant/step start, cosine and onecycle peak
    min_lr: float = 1e-5  # floor of cosine, cyclic and onecycle
    max_lr: float = 1e-2  # cyclic peak
    cycle_epochs: float = 10.0  # cosine restart period / cyclic full cycle length, in epochs
    step_epochs: float = 10.0  # step decay: multiply by gamma every step_epochs
    gamma: float = 0.5  # step decay factor
    pct_start: float = 0.3  # onecycle: fraction of the run spent rising
    warmup_epochs: float = 0.0  # linear warm-up from min_lr, any schedule

    def validate(self) -> None:
        _choice("schedule.name", self.name, SCHEDULES)
        for key in ("lr", "min_lr", "max_lr"):
            value = getattr(self, key)
            _check(f"schedule.{key}", value, 0 < value < 10, "a learning rate in (0, 10)")
        _check("schedule.min_lr", self.min_lr, self.min_lr <= self.lr, f"<= schedule.lr={self.lr}")
        if self.name == "cyclic":
            _check("schedule.max_lr", self.max_lr, self.max_lr > self.min_lr, "> schedule.min_lr")
        for key in ("cycle_epochs", "step_epochs"):
            value = getattr(self, key)
            _check(f"schedule.{key}", value, value > 0, "a positive number of epochs")
        _check("schedule.gamma", self.gamma, 0 < self.gamma <= 1, "a factor in (0, 1]")
        _check("schedule.pct_start", self.pct_start, 0 < self.pct_start < 1, "a fraction in (0, 1)")
        _check("schedule.warmup_epochs", self.warmup_epochs, self.warmup_epochs >= 0, ">= 0")


def cycle_end_epochs(epochs: int, cfg: ScheduleConfig) -> list[int]:
    """Completed-epoch counts (1-based) at which a cosine/cyclic cycle ends, for snapshot ensembling.

    A cycle ending mid-epoch (fractional cycle_epochs) maps to the last epoch finished inside it, where the
    lr is lowest before the restart. Only whole cycles within the run count; [] for other schedules.
    """
    if cfg.name not in ("cosine", "cyclic"):
        return []
    ends, k = [], 1
    while k * cfg.cycle_epochs <= epochs + 1e-9:
        end = math.floor(k * cfg.cycle_epochs + 1e-9)
        if end >= 1 and (not ends or end != ends[-1]):
            ends.append(end)
        k += 1
    return ends


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4  # epochs per fold (--epochs)
    batch_size: int = 16  # tiles per optimizer step
    optimizer: str = "adam"  # adam | sgd
    weight_decay: float = 1e-4  # on conv/linear weights only, not biases or BatchNorm
    momentum: float = 0.9  # sgd only
    loss_switch_epoch: int = 2  # BCE before this epoch (0-based), Lovasz hinge (elu+1) from it on
    empty_loss_weight: float = 0.1  # weight of the empty head's BCE in the total loss
    deep_supervision_weight: float = 0.1  # weight of each decoder stage's auxiliary BCE
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU) | bf16 | fp16 | fp32
    channels_last: bool = True  # CUDA only
    eval_tta: bool = True  # horizontal-flip TTA when evaluating and predicting
    # evaluate the held-out fold every N epochs; the last epoch, snapshot epochs and (in a search)
    # ASHA's rungs are always evaluated (salt_model/training/cadence.py); an epoch not evaluated reports its
    # training metrics only
    eval_every: int = 1
    # flip TTA only in the evaluations that score an ensemble member (last, snapshots, SWA); the others
    # (the best-epoch watch, ASHA's rungs) run one forward pass. Off: eval_tta everywhere
    tta_members_only: bool = False
    loader_workers: int = 0  # DataLoader worker processes (0 = augment in the training process)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    # Ensemble members (salt_model/training/members.py). snapshots: keep the weights at the last N cycle ends
    # of a cosine/cyclic schedule (schedules.cycle_end_epochs), each with its OOF probabilities.
    snapshots: int = 0
    # swa_epochs: stochastic weight averaging of the weights at the end of each of the last N epochs
    # (0 = off), BatchNorm statistics recomputed on the fold's training tiles; with cosine/cyclic,
    # N = schedule.cycle_epochs averages the last cycle, 2 x cycle_epochs the last two.
    swa_epochs: int = 0
    # Ray checkpoints kept per k-fold run (CheckpointConfig.num_to_keep); a finished or stopped Tune
    # trial then keeps only its last one, without optimizer state. 0 = keep everything, untouched.
    keep_checkpoints: int = 2
    seed: int = 0  # seeds each fold's weights, shuffling and augmentation

    def validate(self) -> None:
        _check("train.epochs", self.epochs, self.epochs >= 1, "an integer >= 1")
        _check("train.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _check("train.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        _check(
            "train.loss_switch_epoch",
            self.loss_switch_epoch,
            0 <= self.loss_switch_epoch <= self.epochs,
            f"in [0, train.epochs={self.epochs}] (= train.epochs: BCE only, never Lovasz)",
        )
        _check("train.empty_loss_weight", self.empty_loss_weight, self.empty_loss_weight >= 0, ">= 0")
        _choice("train.precision", self.precision, PRECISIONS)
        _check("train.loader_workers", self.loader_workers, self.loader_workers >= 0, ">= 0")
        _check("train.threads", self.threads, self.threads >= 0, ">= 0")
        _check("train.checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1, ">= 1")
        _check("train.eval_every", self.eval_every, self.eval_every >= 1, ">= 1 (1 = every epoch)")
        _check("train.snapshots", self.snapshots, self.snapshots >= 0, ">= 0")
        _check(
            "train.swa_epochs",
            self.swa_epochs,
            0 <= self.swa_epochs <= self.epochs,
            f"in [0, train.epochs={self.epochs}] (0 = no SWA)",
        )
        _check("train.keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 0, ">= 0 (0 = all)")


@dataclass(frozen=True)
class DataConfig:
    folds: int = 3  # k of the stratified k-fold split (configs/tgs.yaml: 5)
    fold_seed: int = 42  # the split is deterministic for this seed
    pad: int = 128  # tiles (101x101) are padded to pad x pad; 112 or 104 cost fewer MACs
    pad_mode: str = "reflect"  # reflect | replicate
    crop_prob: float = 0.5  # random crop resized back to 101 with this probability
    crop_size: int = 90  # side of that crop
    intensity_prob: float = 0.5  # one of brightness/contrast/gamma with this probability
    synthetic_train: int = 200  # tiles generated when --data synthetic
    synthetic_test: int = 50  # test tiles generated when --data synthetic
    synthetic_seed: int = 0  # seed of the generated data set

    def validate(self) -> None:
        _check("data.folds", self.folds, self.folds >= 2, "an integer >= 2")
        _check("data.pad", self.pad, self.pad >= 101, ">= 101 (tiles are 101x101)")
        _choice("data.pad_mode", self.pad_mode, PAD_MODES)
        _check("data.crop_prob", self.crop_prob, 0 <= self.crop_prob <= 1, "a probability in [0, 1]")
        _check("data.crop_size", self.crop_size, 32 <= self.crop_size <= 101, "in [32, 101]")
        _check("data.intensity_prob", self.intensity_prob, 0 <= self.intensity_prob <= 1, "in [0, 1]")
        _check(
            "data.synthetic_train",
            self.synthetic_train,
            self.synthetic_train >= 2 * self.folds,
            f">= 2 x data.folds ({2 * self.folds})",
        )
        _check("data.synthetic_test", self.synthetic_test, self.synthetic_test >= 0, ">= 0")


@dataclass(frozen=True)
class SearchConfig:
    """The space orchestrator.tune searches (read by Optuna's define-by-run function)."""

    trials: int = 4  # k-fold runs to try
    schedules: tuple[str, ...] = ("cyclic", "cosine", "step", "onecycle", "constant")  # schedule.name choices
    lr_low: float = 3e-4  # base/peak learning rate, log-uniform in [lr_low, lr_high]
    lr_high: float = 1e-2  # upper end of the lr range
    min_lr_ratio_low: float = 3.0  # cyclic/cosine/onecycle floor = lr / ratio, ratio log-uniform
    min_lr_ratio_high: float = 100.0  # upper end of the ratio range
    cycle_epochs_low: int = 2  # cosine restart period / cyclic cycle, in epochs
    cycle_epochs_high: int = 20  # upper end, bounded above by train.epochs
    switch_low: int = 1  # BCE -> Lovasz switch epoch, bounded above by train.epochs - 1
    switch_high: int = 1000  # upper end of the switch range
    grace_epochs: int = 0  # ASHA judges no trial before this epoch (0 = switch_low + 2)
    reduction_factor: int = 2  # ASHA keeps the top 1/reduction_factor at each rung
    early_stopping: bool = True  # ASHA on the fold-mean metric
    max_concurrent: int = 0  # trials at once (0 = as many as the cluster has room for)
    seed: int = 0  # Optuna's TPE sampler seed
    # pseudo-labels (orchestrator.tune --pseudo-from RUN): also search the confidence c (pseudo.high = c,
    # pseudo.low = 1 - c) and the pseudo-labelled tiles' loss weight (log-uniform); off by default
    pseudo: bool = False
    pseudo_confidence_low: float = 0.7  # c is uniform in [pseudo_confidence_low, _high]
    pseudo_confidence_high: float = 0.95  # upper end of the c range
    pseudo_weight_low: float = 0.25  # the weight is log-uniform in [pseudo_weight_low, _high]
    pseudo_weight_high: float = 1.0  # upper end of the weight range

    def validate(self) -> None:
        _check("search.trials", self.trials, self.trials >= 1, ">= 1")
        if not self.schedules:
            raise ValueError(f"search.schedules is empty; choose from {list(SCHEDULES)}")
        for name in self.schedules:
            _choice("search.schedules[]", name, SCHEDULES)
        _check(
            "search.lr_low",
            self.lr_low,
            0 < self.lr_low <= self.lr_high,
            f"in (0, search.lr_high={self.lr_high}]",
        )
        _check(
            "search.min_lr_ratio_low",
            self.min_lr_ratio_low,
            1 <= self.min_lr_ratio_low <= self.min_lr_ratio_high,
            "in [1, search.min_lr_ratio_high]",
        )
        _check(
            "search.cycle_epochs_low",
            self.cycle_epochs_low,
            1 <= self.cycle_epochs_low <= self.cycle_epochs_high,
            "in [1, search.cycle_epochs_high]",
        )
        _check(
            "search.switch_low",
            self.switch_low,
            0 <= self.switch_low <= self.switch_high,
            "in [0, search.switch_high]",
        )
        _check("search.grace_epochs", self.grace_epochs, self.grace_epochs >= 0, ">= 0")
        _check("search.reduction_factor", self.reduction_factor, self.reduction_factor >= 2, ">= 2")
        _check("search.max_concurrent", self.max_concurrent, self.max_concurrent >= 0, ">= 0")
        _check(
            "search.pseudo_confidence_low",
            self.pseudo_confidence_low,
            0.5 < self.pseudo_confidence_low <= self.pseudo_confidence_high < 1,
            "in (0.5, search.pseudo_confidence_high], with pseudo_confidence_high < 1",
        )
        _check(
            "search.pseudo_weight_low",
            self.pseudo_weight_low,
            0 < self.pseudo_weight_low <= self.pseudo_weight_high,
            "in (0, search.pseudo_weight_high]",
        )


@dataclass(frozen=True)
class ClusterConfig:
    """Resources of each fold worker on Ray (orchestrator.train/tune); --gpus-per-fold/--cpus-per-fold win."""

    gpus_per_fold: float = -1.0  # -1 = auto (orchestrator/packing.py; 0 on a cluster without GPUs)
    cpus_per_fold: float = 0.0  # 0 = the GPU node's CPUs shared among its folds (CPU runs: the cluster's)

    def validate(self) -> None:
        g = self.gpus_per_fold
        _check(
            "cluster.gpus_per_fold",
            g,
            g == -1 or 0 <= g <= 1 or (g > 1 and float(g).is_integer()),
            "-1 (auto), 0, a fraction in (0, 1] or a whole number",
        )
        _check("cluster.cpus_per_fold", self.cpus_per_fold, self.cpus_per_fold >= 0, ">= 0 (0 = auto)")


@dataclass(frozen=True)
class DecodeConfig:
    """How probabilities become masks (salt_model/evaluation/thresholds.py); the thresholds are chosen on OOF."""

    # gate: a pixel is salt when p > pixel and the head's p_empty <= empty | product: when
    # p x (1 - p_empty) > pixel (the head and the pixel map decide together), then the same gate
    empty_rule: str = "gate"

    def validate(self) -> None:
        _choice("decode.empty_rule", self.empty_rule, EMPTY_RULES)


PSEUDO_INITS = ("scratch", "previous")
PSEUDO_SUBMITS = ("best", "last")
PSEUDO_TEACHERS = ("fold", "ensemble")


@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo-label rounds (orchestrator.train; salt_model/training/pseudo_labels.py has the rule)."""

    rounds: int = 0  # rounds after the first k-fold training (0 = off)
    low: float = 0.2  # a pixel is confident below `low` or above `high` (the empty head too)
    high: float = 0.8  # confident above this (see low)
    min_fraction: float = 0.9  # a test tile is kept when at least this fraction of its pixels is confident
    weight: float = 1.0  # loss weight of a pseudo-labelled tile (a labelled tile weighs 1)
    init: str = "scratch"  # scratch | previous: a round starts from the previous round's fold weights
    # epochs of each round after the first (0 = train.epochs); the round ends with as many Lovasz
    # epochs as round 0 (train.epochs - train.loss_switch_epoch), its loss switch moving with it
    epochs: int = 0
    submit: str = "best"  # best: the round with the best OOF (labelled tiles) | last: the last round
    # fold: fold r's tiles are labelled by fold r's own previous-round members, which never saw fold r's
    # held-out tiles | ensemble: every fold's tiles by the mean of all k folds' members
    teacher: str = "fold"

    def validate(self) -> None:
        _check("pseudo.rounds", self.rounds, self.rounds >= 0, ">= 0 (0 = off)")
        _check("pseudo.low", self.low, 0 <= self.low < self.high, f"in [0, pseudo.high={self.high})")
        _check("pseudo.high", self.high, self.high <= 1, "<= 1")
        _check("pseudo.min_fraction", self.min_fraction, 0 < self.min_fraction <= 1, "in (0, 1]")
        _check("pseudo.weight", self.weight, self.weight > 0, "> 0")
        _check("pseudo.epochs", self.epochs, self.epochs >= 0, ">= 0 (0 = train.epochs)")
        _choice("pseudo.init", self.init, PSEUDO_INITS)
        _choice("pseudo.submit", self.submit, PSEUDO_SUBMITS)
        _choice("pseudo.teacher", self.teacher, PSEUDO_TEACHERS)


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking of orchestrator.train/tune (orchestrator/tracking.py); --mlflow URI wins."""

    # "" = off | an MLflow tracking URI: http://host:5000, sqlite:///mlflow.db, a local folder
    mlflow_uri: str = ""
    experiment: str = "salt-orchestrator"  # the MLflow experiment of the runs (created when missing)

    def validate(self) -> None:
        _check("tracking.experiment", self.experiment, bool(self.experiment.strip()), "a non-empty name")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        for section in SECTIONS:
            getattr(self, section).validate()
        self._check_snapshots()

    def _check_snapshots(self) -> None:
        """train.snapshots needs that many cycle ends within the epoch budget."""
        if not self.train.snapshots:
            return
        ends = cycle_end_epochs(self.train.epochs, self.schedule)
        if self.train.snapshots > len(ends):
            how = (
                f"schedule.name={self.schedule.name!r} with cycle_epochs={self.schedule.cycle_epochs} "
                f"ends {len(ends)} cycle(s) within train.epochs={self.train.epochs} (at epochs {ends})"
                if self.schedule.name in ("cosine", "cyclic")
                else f"schedule.name={self.schedule.name!r} has no cycles; snapshots need cosine or cyclic"
            )
            raise ValueError(
                f"train.snapshots={self.train.snapshots} is out of range: {how}; expected at most {len(ends)}"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> Config:
        """Builds a config from nested dicts; missing keys keep their defaults."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a mapping of sections {sorted(SECTIONS)}, got {raw!r}")
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {sorted(unknown)}; allowed: {sorted(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = raw.get(name) or {}
            if not isinstance(values, dict):
                raise ValueError(f"{source}: section {name!r} must be a mapping, got {values!r}")
            sections[name] = _build_section(section_cls, name, values, source)
        return cls(**sections)

    def with_overrides(self, overrides: dict[str, Any] | list[str] | None) -> Config:
        """Returns a new config with dotted keys replaced: {"train.epochs": 3} or ["train.epochs=3"]."""
        if not overrides:
            return self
        if isinstance(overrides, (list, tuple)):
            overrides = dict(parse_override(item) for item in overrides)
        raw = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in SECTIONS or not name:
                raise ValueError(
                    f"override {key!r}: expected 'section.key' with section in {sorted(SECTIONS)}"
                )
            raw[section][name] = value
        return Config.from_dict(raw, source="overrides")

    def save(self, path: str | Path) -> None:
        from salt_model.io import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())


# train keys that change how a run executes, not what it trains: a resume may change them freely
RUNTIME_KEYS = frozenset(
    {
        "train.loader_workers",
        "train.threads",
        "train.checkpoint_every",
        "train.eval_tta",
        "train.channels_last",
        "train.keep_checkpoints",
        "train.eval_every",  # which epochs are scored, never the weights
        "train.tta_members_only",
        "pseudo.rounds",  # how many rounds follow, not what one round trains
        "pseudo.submit",
    }
)


def config_changes(saved: Config, config: Config) -> list[str]:
    """'section.key old -> new' for every key that differs and shapes training (not RUNTIME_KEYS)."""
    changes = []
    old, new = saved.to_dict(), config.to_dict()
    for section in ("model", "data", "schedule", "train", "pseudo"):
        for key, value in new[section].items():
            name = f"{section}.{key}"
            if name not in RUNTIME_KEYS and old.get(section, {}).get(key) != value:
                changes.append(f"{name} {old[section].get(key)!r} -> {value!r}")
    return changes


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "search": SearchConfig,
    "cluster": ClusterConfig,
    "pseudo": PseudoConfig,
    "decode": DecodeConfig,
    "tracking": TrackingConfig,
}


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Loads a YAML or JSON config file (or the defaults when path is None), then applies overrides."""
    config = Config()
    if path is not None:
        config = Config.from_dict(read_config_file(Path(path)), source=f"config file {path}")
    return config.with_overrides(overrides)


def read_config_file(path: Path, children: tuple[Path, ...] = ()) -> Any:
    """The sections of a YAML/JSON config file. `extends: BASE` (a path relative to the file) reads
    BASE first; this file's keys then replace BASE's one by one, section by section."""
    if not path.is_file():
        raise ValueError(f"config file {path}: not found")
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path}: not valid YAML/JSON ({err})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw  # Config.from_dict names what is wrong with a non-mapping
    base = raw.pop("extends")
    if not isinstance(base, str) or not base:
        raise ValueError(f"config file {path}: extends: expected a config file name, got {base!r}")
    base_path, chain = (path.parent / base).resolve(), (*children, path.resolve())
    if base_path in chain:
        raise ValueError(f"config file {path}: extends {base} makes a loop")
    merged = read_config_file(base_path, chain)
    if not isinstance(merged, dict):
        raise ValueError(f"config file {base_path}: expected a mapping of sections, got {merged!r}")
    for section, values in raw.items():
        both = isinstance(values, dict) and isinstance(merged.get(section), dict)
        merged[section] = {**merged[section], **values} if both else values
    return merged


def parse_override(item: str) -> tuple[str, Any]:
    """'train.epochs=3' -> ('train.epochs', 3); the value is parsed as YAML (numbers, bools, null)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r}: expected 'section.key=value', e.g. 'train.epochs=3'")
    return key.strip(), yaml.safe_load(text) if text.strip() else None


def _build_section(section_cls: type, name: str, values: dict[str, Any], source: str):
    hints = get_type_hints(section_cls)
    allowed = [f.name for f in fields(section_cls)]
    unknown = set(values) - set(allowed)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {sorted(f'{name}.{k}' for k in unknown)}; "
            f"allowed in {name!r}: {allowed}"
        )
    return section_cls(**{k: _coerce(f"{name}.{k}", v, hints[k], source) for k, v in values.items()})


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Checks a value against its field's type, accepting ints for floats; never silently casts."""
    hint_text = str(hint)
    if value is None and "None" in hint_text:
        return None
    if hint is bool or hint_text == "bool":
        if isinstance(value, bool):
            return value
    elif hint is int or hint_text == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float or hint_text == "float":
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif "tuple" in hint_text:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, str):  # --set search.schedules=cosine,cyclic
            return tuple(v.strip() for v in value.split(",") if v.strip())
    elif "str" in hint_text:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - every field above is one of these types
        raise AssertionError(f"unhandled type {hint} for {key}")
    expected = hint_text.replace("<class '", "").replace("'>", "")
    raise ValueError(f"{source}: {key}={value!r} has the wrong type; expected {expected}")


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is out of range; expected {expected}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")
