"""The one place for config defaults: a typed schema (registered with Hydra's ConfigStore), and the
composition of conf/ with overrides. Imports nothing from the project; the checks of the values live
in `spfde.checks.validation`.

Each default is written once. Keys that say which option of a config group was chosen (a data set's
name, sizes and augmentation, a model's depth and width, a method's options) are `???` here and set by
the option's file in `conf/<group>/`; every other key has its default here and no YAML file repeats it
(tests/test_config.py checks both, and that the table of docs/configuration.md agrees).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from spfde.errors import SpfdeError


class ConfigError(SpfdeError, ValueError):
    """A bad configuration value; the message is one line meant for the user."""


@dataclass
class DatasetConfig:  # the data set's own keys come from conf/dataset/<name>.yaml
    name: str = MISSING  # conf/dataset/<name>.yaml: cifar10 | cifar100 | imagenet | imagefolder | digits | fake
    root: str = MISSING  # where the data is (CIFAR: downloaded there; folders: train/ and val/ class folders)
    num_classes: int = MISSING
    channels: int = MISSING  # 3 (RGB) or 1 (grayscale)
    image_size: int = MISSING  # side of the (square) training images in pixels
    # sizes are known before any download so that planning needs no data
    train_size: int = MISSING
    test_size: int = MISSING  # images of the test (validation) split
    crop_padding: int = MISSING  # pad-and-random-crop augmentation; 0 turns it off
    hflip: bool = MISSING  # random horizontal flips in training augmentation
    download: bool = True  # CIFAR: torchvision downloads it into root when it is missing (false: fail instead)
    workers: int = 8  # folder data: DataLoader worker processes
    # folder data: seconds a loader waits for a batch from its workers before it stops the run naming itself
    # (a stuck or dead worker is an error, never a hang). Our choice: a worker reads or decodes a batch of 256
    # ImageNet images in a few seconds; 120 s leaves room for a slow network file system.
    timeout_s: float = 120.0
    test_fraction: float = 0.2  # digits: share of the stratified test split
    on_bad_file: str = "error"  # image folders: an unreadable image stops the run naming it (error) or is skipped
    # Image folders only (imagenet, imagefolder). image_size 0 = from the images: their native size when
    # the sampled images are small (<= 64 px on the longer side), else 224.
    # loader: how folder images are decoded. auto = on CUDA, DALI if installed else gpu; on other devices, and
    # for folders holding non-JPEG files, pil | gpu = torchvision.io.decode_jpeg on the training device
    # (workers only read file bytes) | dali = NVIDIA DALI (pip install -e '.[dali]') | pil = PIL in workers
    loader: str = "auto"
    # augment: training augmentation. auto = cifar for small images (<= 64 px), imagenet otherwise |
    # imagenet = RandomResizedCrop(scale 0.08-1) | cifar = pad image_size // 8 and random crop |
    # none = no random crop. Flips follow hflip with every choice but none.
    augment: str = "auto"
    # in_memory: decode the folder once into a uint8 tensor on the device and serve it like CIFAR (no workers).
    # auto = when the images are small (<= 64 px) and train + val at image_size take at most 2 GiB | true | false
    in_memory: str = "auto"
    split_seed: int = 0  # digits: the split, fake: the images; fixed across run seeds


@dataclass
class ModelConfig:  # from conf/model/<name>.yaml
    name: str = MISSING  # conf/model/<name>.yaml: resnet32 | resnet50 | vgg19
    depth: int = MISSING  # CIFAR ResNet: 6n+2; VGG: 11/13/16/19
    width: int = MISSING  # channel multiplier; the paper's "2x wide" ResNet-32 is width 2


@dataclass
class OptimConfig:  # SGD with momentum and cosine annealing as in MEST's CIFAR code (lr 0.1, 0.9, 1e-4, cosine)
    name: str = MISSING  # conf/optim/<name>.yaml
    lr: float = 0.1  # peak learning rate (after any warm-up)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 1e-4  # L2 penalty (SGD's weight_decay)
    schedule: str = "cosine"  # cosine | constant | step (lr x step_gamma at each of step_at)
    step_at: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9])  # step: fractions of training
    step_gamma: float = 0.1  # step: the factor at each step
    min_lr: float = 0.0  # the learning rate the schedule ends at
    warmup_epochs: int = 0  # linear warm-up from 0 to lr over these epochs (ImageNet's recipe: 5)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (ImageNet's recipe: 0.1)


# Method options are typed here but their defaults live in conf/sparsity/<method>.yaml, next to the
# paper or code each value comes from; `???` means "set by the method's file".
@dataclass
class DropGrowConfig:  # rigl, set
    delta_t: int = MISSING  # steps between structure updates; 0 = once per epoch
    drop_fraction: float = MISSING  # fraction of active weights replaced per update (alpha / zeta)
    decay: str = MISSING  # cosine | constant
    final_drop_fraction: float = MISSING  # cosine: where the fraction ends, at the last update step
    end_fraction: float = MISSING  # no updates after this fraction of the run's steps


@dataclass
class SaliencyConfig:  # snip
    batches: int = MISSING  # mini-batches whose saliency scores decide the mask
    scope: str = MISSING  # global | layer


@dataclass
class GraspConfig:
    samples_per_class: int = MISSING  # images per class in each fetch of the GraSP score
    iterations: int = MISSING  # fetches of samples_per_class per class
    temperature: float = MISSING  # softmax temperature of the GraSP score
    scope: str = MISSING  # global | layer


@dataclass
class MESTBounds:
    prune_to: list[float] = MISSING  # per phase: prune to sparsity ratio + offset
    grow_to: list[float] = MISSING  # per phase: then grow (random, zero init) to sparsity ratio + offset


@dataclass
class MESTConfig:
    mode: str = MISSING  # em | ems
    lambda_grad: float = MISSING  # prune score |w| + lambda * |grad|
    decay_at: list[float] = MISSING  # phase starts, as fractions of training
    em: MESTBounds = field(default_factory=MESTBounds)
    ems: MESTBounds = field(default_factory=MESTBounds)


@dataclass
class ITOPConfig(DropGrowConfig):
    base: str = MISSING  # rigl | set


@dataclass
class DeepRConfig:
    l1: float = MISSING  # L1 pull on the connection parameters
    noise: float = MISSING  # std of the Gaussian noise added to the gradient


@dataclass
class DSRConfig:
    delta_t: int = MISSING  # steps between reallocations (doubled at each double_period_at)
    double_period_at: list[float] = MISSING  # fractions of training
    prune_fraction: float = MISSING  # target pruned per reallocation, fraction of the masked weights
    threshold: float = MISSING  # initial global magnitude threshold H
    tolerance: float = MISSING  # δ: H moves when the pruned count leaves [(1-δ), (1+δ)] x target


@dataclass
class SNFSConfig:
    prune_rate: float = MISSING  # fraction of active weights replaced each epoch (cosine-decayed)


@dataclass
class LTHConfig:
    prune_rate: float = MISSING  # fraction of the remaining weights removed per round
    rewind_epoch: int = MISSING  # survivors rewind to their weights after this many epochs of round 0
    scope: str = MISSING  # global | layer
    round: int = -1  # set by the LTH driver; -1 runs every round
    workdir: str = ""  # set by the LTH driver


@dataclass
class SparsityConfig:
    name: str = MISSING  # conf/sparsity/<name>.yaml
    ratio: float = 0.9  # target sparsity of the masked layers (paper: 0.9 / 0.95 / 0.98)
    distribution: str = "uniform"  # uniform (paper Sec. 5) | erk
    # which conv/linear layers are masked: main_convs (MEST's code) | all_but_first (RigL's) | all (ITOP's); each
    # method's file sets its reference code's rule (spfde.sparse.masks)
    masked: str = MISSING
    dense_layers: list[str] = field(default_factory=list)  # module-name patterns kept dense besides the rule's
    rigl: DropGrowConfig = field(default_factory=DropGrowConfig)
    set: DropGrowConfig = field(default_factory=DropGrowConfig)
    snip: SaliencyConfig = field(default_factory=SaliencyConfig)
    grasp: GraspConfig = field(default_factory=GraspConfig)
    mest: MESTConfig = field(default_factory=MESTConfig)
    itop: ITOPConfig = field(default_factory=ITOPConfig)
    deepr: DeepRConfig = field(default_factory=DeepRConfig)
    dsr: DSRConfig = field(default_factory=DSRConfig)
    snfs: SNFSConfig = field(default_factory=SNFSConfig)
    lth: LTHConfig = field(default_factory=LTHConfig)


@dataclass
class LoggerConfig:
    name: str = MISSING  # conf/logger/<name>.yaml: wandb | none
    project: str = "spfde"  # wandb project
    entity: str | None = None  # wandb entity (team or user); null = wandb's default
    mode: str = "offline"  # offline (runs never wait on a network; `wandb sync` later) | online | disabled
    group: str | None = None  # wandb group (a sweep sets its name)
    tags: list[str] = field(default_factory=list)  # wandb tags
    log_checkpoints: bool = False  # also upload last.pt with summary.json as the run's wandb artifact


@dataclass
class FreezeSchemeConfig:  # the schemes of paper Fig. 3a; their parameters are our choice
    name: str = MISSING  # conf/freeze_scheme/<name>.yaml: single_shot (paper) | resume | periodic | delayed
    resume_fraction: float = 0.1  # resume: final fine-tune with every block released, share of training
    resume_lr_scale: float = 0.1  # resume: the fine-tune starts at lr x this and anneals to min_lr
    period: int = 5  # periodic/delayed: active windows of this many epochs (Δτ = 5); frozen windows are solved
    delay: float = 0.1  # delayed: no freezing during this share of training


@dataclass
class AnalysisConfig:
    every: int = 0  # snapshot every N epochs (and at the last); 0 = off (paper Sec. 3 measurements)
    probe_size: int = 256  # test images whose block outputs feed CKA
    top_fraction: float = 0.5  # structural similarity tracks the top 50% magnitude non-zeros (paper Sec. 3.1)
    debiased: bool = False  # debiased HSIC for CKA (Kornblith et al. 2019) in logged series


@dataclass
class CostConfig:
    memory_batch: int = 64  # batch size of the memory accounting (paper Fig. 4: 64, fp32)
    # paper: Fig. 4's convention (one output activation per conv/linear layer, frozen or not; weight and
    # activation gradients of trainable layers only) | autograd: what autograd keeps for backward, measured
    memory: str = "paper"


@dataclass
class DistributedConfig:
    sync_bn: bool = False  # several ranks: SyncBatchNorm (CUDA), batch statistics over the global batch


@dataclass
class PlanConfig:  # python -m spfde.plan
    format: str = "table"  # table | json
    # time the run's own training step (each frozen depth it uses), evaluation and start-up on the configured
    # device and precision, and print the estimated wall-clock next to the FLOPs (false: instant, FLOPs only)
    calibrate: bool = False
    calibration_steps: int = 10  # timed steps per frozen depth, after a warm-up epoch of the same length
    # measured times per (device, model, input size, batch, precision, depth, ...), so each shape is timed once
    calibration_file: str = "outputs/plan-calibration.json"
    # budget solver: list the (freeze, sieve) pairs on a 0.05 grid (each <= 0.5) whose planned training FLOPs are
    # at most this fraction of the same run without freezing and sieving, and choose one (docs/cost.md); 0 = off
    budget: float = 0.0
    budget_hours: float = 0.0  # the same with a wall-clock budget in hours (needs plan.calibrate=true); 0 = off
    results: str = ""  # a sweep directory: choose the best measured mean accuracy among its finished pairs instead


@dataclass
class SearchConfig:  # +search=pareto|best_acc (hydra_plugins/spfde_search): a point over the budget is never trained
    budget: float = 0.0  # share of the training FLOPs of the same run without freezing and sieving (0 = none)
    budget_hours: float = 0.0  # the same in calibrated wall-clock hours (as plan.budget_hours; 0 = none)


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    freeze_scheme: FreezeSchemeConfig = field(default_factory=FreezeSchemeConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    experiment_name: str = "default"  # a name for the setup (experiment files set it); logged with the run
    epochs: int = 160  # training epochs (paper, CIFAR: 160)
    interval: int = 5  # Δτ (epochs): MEST structure updates, freeze steps and sieve updates (MEST: 5)
    freeze: float = 0.0  # x: share of the run's training FLOPs that layer freezing must save (0 = off)
    freeze_fraction: float = 0.6667  # candidate blocks hold about this share of the layers (paper: 2/3)
    # freeze events on structure-update epochs: T_frz a multiple of interval and > 0 (paper Sec. 4.2.1);
    # false searches T_frz epoch by epoch
    freeze_sync: bool = True
    per_block_lr: bool = True  # each block's cosine LR runs over its own active epochs (paper Sec. 4.2.1)
    sieve: float = 0.0  # y: share of the training set kept out at any time (0 = off)
    sieve_update: float = 0.1  # p: share of the partial set swapped every Δτ (our choice, see docs/sieving.md)
    sieve_method: str = "circular"  # circular (paper) | oneshot (MEST) | random (control)
    sieve_oneshot_at: float = 0.4375  # oneshot: removal point, share of training (MEST's script: epoch 70 of 160)
    batch_size: int = 64  # training mini-batch (MEST's CIFAR code: 64), over all ranks together
    eval_batch_size: int = 512  # evaluation mini-batch
    seed: int = 0  # weights, masks, data order and sieve draws
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    channels_last: bool = True  # CUDA only
    cuda_graphs: str = "auto"  # auto (on with CUDA) | on | off: replay plain training steps from CUDA graphs
    # cuDNN determinism on CUDA (CPU runs are deterministic anyway); a layer without a deterministic kernel stops
    # the run with one line naming the ways out (deterministic=false, precision=fp32, channels_last=false)
    deterministic: bool = False
    progress: bool = True  # tqdm bar (only when stdout is a terminal)
    threads: int = 0  # CPU threads for torch; 0 = SLURM_CPUS_PER_TASK when set, else torch's default
    fresh: bool = False  # start over in a run directory that already holds results
    run_dir: Any = MISSING  # set from Hydra's output dir


# an installed wheel carries the configs in spfde/conf (setup.py); a checkout reads its conf/ directly
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"
# The user's own configs (launcher/mycluster.yaml with a partition and account, sweep/mine.yaml, ...) live in a
# directory of conf/'s layout named by this variable: Hydra searches it after conf/ (conf/config.yaml's
# hydra.searchpath), so they survive reinstalling the package, and conf/'s own files cannot be shadowed by it.
USER_CONFIG_ENV = "SPFDE_CONFIG_DIR"


def user_config_dir() -> Path | None:
    value = os.environ.get(USER_CONFIG_ENV, "")
    return Path(value).expanduser().absolute() if value else None


def config_dirs() -> list[Path]:
    """Where config groups are found, in Hydra's order: conf/, then the user's config directory."""
    user = user_config_dir()
    return [CONF_DIR, user] if user else [CONF_DIR]


def user_searchpath() -> list[str]:
    """conf/config.yaml's hydra.searchpath (resolver spfde_user_config): the user's config directory, if set."""
    user = user_config_dir()
    return [f"file://{user}"] if user else []


def register_configs() -> None:
    store = ConfigStore.instance()
    if "base_config.yaml" not in store.list(""):  # once per process: converting the dataclass is ~1/6 of a composition
        store.store(name="base_config", node=Config)


# Compositions this process made, newest last: a precheck composes the same command line several times (a search's
# own settings, its jobs, its sweeper), and each composition takes about a tenth of a second. Each is kept with its
# hydra node, and (once asked for) without it: a copy of that is half the work.
COMPOSED: OrderedDict[tuple, DictConfig] = OrderedDict()
WITHOUT_HYDRA: dict[tuple, DictConfig] = {}
COMPOSED_KEPT = 64


def kept_without_hydra(key: tuple) -> DictConfig:
    """The kept composition of `key` without its hydra node, as Hydra's compose gives it without
    return_hydra_config (never handed out: callers get copies)."""
    if key not in WITHOUT_HYDRA:
        cfg = copy.deepcopy(COMPOSED[key])
        with open_dict(cfg):
            del cfg["hydra"]
        WITHOUT_HYDRA[key] = cfg
    return WITHOUT_HYDRA[key]


def config_files_digest() -> str:
    """A digest of every file in the config directories, names and contents: a kept composition is used only
    while these are as they were (a file rewritten within the clock's tick keeps its modification time)."""
    digest = hashlib.blake2b(digest_size=16)
    for directory in config_dirs():
        files = (Path(root, name) for root, _, names in os.walk(directory, followlinks=True) for name in names)
        for path in sorted(files):
            try:
                content = path.read_bytes()
            except OSError:
                continue
            digest.update(f"{path}\0{len(content)}\0".encode())
            digest.update(content)
    return digest.hexdigest()


def compose_key(overrides: list[str]) -> tuple | None:
    """What a composition depends on: the config files, the user config directory, the working directory (Hydra
    records it in hydra.runtime.cwd) and the overrides. None with hydra.searchpath among them (other files)."""
    if any(o.lstrip("+~").startswith("hydra.searchpath") for o in overrides):
        return None
    return str(CONF_DIR), os.environ.get(USER_CONFIG_ENV, ""), os.getcwd(), tuple(overrides), config_files_digest()


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """Compose conf/config.yaml with command-line style overrides (tests, `spfde.planning.plan`, prechecks): a copy
    of a composition kept from the same overrides, config files, user config directory and working directory
    (Hydra records it in hydra.runtime.cwd), else a new one. With hydra.searchpath among the overrides, always new."""
    from hydra import compose, initialize_config_dir

    overrides = list(overrides)
    key = compose_key(overrides)
    keep = key is not None and COMPOSED_KEPT > 0
    if key in COMPOSED:
        COMPOSED.move_to_end(key)
    elif keep and not with_hydra and (derived := with_values_set(key)) is not None:
        return derived
    else:
        register_configs()
        register_resolvers()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=with_hydra or keep)
        if not keep:  # the caller's own
            return cfg
        COMPOSED[key] = cfg
        while len(COMPOSED) > COMPOSED_KEPT:
            WITHOUT_HYDRA.pop(COMPOSED.popitem(last=False)[0], None)
    # the caller's own copy: what it changes, the next caller never sees
    return copy.deepcopy(COMPOSED[key] if with_hydra else kept_without_hydra(key))


SCALARS = (str, int, float, bool, type(None))  # the values with_values_set sets (others would be merged)


def with_values_set(key: tuple) -> DictConfig | None:
    """The composition of key's overrides (without the hydra node) made from a kept one whose overrides differ only
    in the values of plain keys (a sweep's jobs: freeze=0 vs freeze=0.1): a copy of it with those values set as
    Hydra sets a command line's values (OmegaConf.update with merge, in struct mode, after the config groups), a
    hundredth of a second instead of a tenth. Only where the kept values and the order cannot matter: each such
    key is set in both (key=value at the same place), lies outside the config groups and Hydra's settings, and is
    given a scalar (which replaces what the node holds; a section or a list would be merged into it), and no other
    value override names it, a key above it or one below it. None when no kept composition qualifies or a value
    does not fit (the caller composes: Hydra's error is the one to show)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf.errors import OmegaConfBaseException

    *context, overrides, digest = key
    parser, values = OverridesParser.create(), None
    for kept_key in reversed(COMPOSED):  # the newest first
        *kept_context, kept, kept_digest = kept_key
        if kept_context != context or kept_digest != digest or len(kept) != len(overrides):
            continue
        differ = [i for i, (a, b) in enumerate(zip(kept, overrides, strict=True)) if a != b]
        try:
            if values is None:  # the value overrides by their place, parsed once
                values = {i: o for i, o in enumerate(parser.parse_overrides(list(overrides)))
                          if o.package is None and not is_group(o.key_or_group)}
            was = parser.parse_overrides([kept[i] for i in differ])
        except Exception:  # noqa: BLE001 - Hydra reports a bad override when it composes
            return None
        changed = [values.get(i) for i in differ]
        if not all(o is not None and o.type == OverrideType.CHANGE and not o.is_sweep_override()
                   and not o.key_or_group.startswith("hydra") and isinstance(o.value(), SCALARS)
                   and (w.type, w.package, w.key_or_group) == (o.type, o.package, o.key_or_group)
                   for o, w in zip(changed, was, strict=True)):
            continue
        names = [o.key_or_group for o in changed]
        others = [o.key_or_group for i, o in values.items() if i not in differ]
        if len(set(names)) != len(names) or any(k == n or k.startswith(n + ".") or n.startswith(k + ".")
                                                for n in names for k in others):
            continue
        derived = copy.deepcopy(kept_without_hydra(kept_key))
        try:
            for o in changed:  # a scalar replaces what the node held: the kept value as the default
                OmegaConf.update(derived, o.key_or_group, o.value(), merge=True)
        except OmegaConfBaseException:
            return None
        return derived
    return None


def run_name(override_dirname: str) -> str:
    """Run directory name from the job's overrides: the same overrides give the same directory, so
    a resubmitted job finds its checkpoint. Unsafe characters are replaced; long names are hashed."""
    if not override_dirname:
        return "default"
    name = re.sub(r"[^A-Za-z0-9._,=+-]", "_", override_dirname)
    if len(name) > 120:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
        name = f"{name[:100]}-{digest}"
    return name


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("spfde_run_name"):
        OmegaConf.register_new_resolver("spfde_run_name", run_name)
    if not OmegaConf.has_resolver("spfde_tasks"):  # SLURM: one task (rank) per GPU, at least one
        OmegaConf.register_new_resolver("spfde_tasks", lambda gpus: max(1, int(gpus)))
    if not OmegaConf.has_resolver("spfde_basename"):
        OmegaConf.register_new_resolver("spfde_basename", lambda path: Path(str(path)).name)
    if not OmegaConf.has_resolver("spfde_user_config"):
        OmegaConf.register_new_resolver("spfde_user_config", user_searchpath)


# Hydra reads conf/config.yaml's hydra.searchpath (${spfde_user_config:}) before anything else of the config, so
# the resolver is there as soon as anything can name CONF_DIR: any composition, ours or another script's, finds it.
register_resolvers()


def is_group(key: str) -> bool:
    """Is `key` a config group (experiment, sweep, sweep/row, ...) rather than a key of the config?"""
    return any((d / key.replace(".", "/")).is_dir() for d in config_dirs())


def group_options(group: str) -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")})
