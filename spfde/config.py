"""The one place for config defaults: a typed schema (registered with Hydra's ConfigStore) and
`validate`, which turns every bad value into one clear line before any work starts.

The YAML files under `conf/` only select and override; every key and its default lives here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad configuration value; the message is one line meant for the user."""


@dataclass
class DatasetConfig:
    name: str = "cifar100"
    root: str = "data/cifar100"
    num_classes: int = 100
    channels: int = 3
    image_size: int = 32
    # sizes are known before any download so that planning needs no data
    train_size: int = 50000
    test_size: int = 10000
    download: bool = True
    crop_padding: int = 4  # pad-and-random-crop augmentation; 0 turns it off
    hflip: bool = True
    workers: int = 8
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
class ModelConfig:
    name: str = "resnet32"
    depth: int = 32  # CIFAR ResNet: 6n+2; VGG: 11/13/16/19
    width: int = 2  # channel multiplier; the paper's "2x wide" ResNet-32 is width 2


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | constant
    min_lr: float = 0.0
    warmup_epochs: int = 0
    label_smoothing: float = 0.0


# Method options are typed here but their defaults live in conf/sparsity/<method>.yaml, next to the
# paper or code each value comes from; `???` means "set by the method's file".
@dataclass
class DropGrowConfig:  # rigl, set
    delta_t: int = MISSING  # steps between structure updates; 0 = once per epoch
    drop_fraction: float = MISSING  # fraction of active weights replaced per update (alpha / zeta)
    decay: str = MISSING  # cosine | constant
    end_fraction: float = MISSING  # no updates after this fraction of training


@dataclass
class SaliencyConfig:  # snip
    batches: int = MISSING
    scope: str = MISSING  # global | layer


@dataclass
class GraspConfig:
    samples_per_class: int = MISSING
    temperature: float = MISSING
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
    name: str = "mest"
    ratio: float = 0.9  # target sparsity of the masked layers (paper: 0.9 / 0.95 / 0.98)
    distribution: str = "uniform"  # uniform (paper Sec. 5) | erk
    dense_layers: list[str] = field(default_factory=lambda: ["blocks.0.conv"])  # paper: first conv dense
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
    name: str = "wandb"  # wandb | none
    project: str = "spfde"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = False  # also upload last.pt with summary.json as the run's wandb artifact


@dataclass
class FreezeSchemeConfig:
    name: str = "single_shot"  # single_shot (paper) | resume | periodic | delayed
    resume_fraction: float = 0.1  # resume: final fine-tune with every block released, share of training
    resume_lr_scale: float = 0.1  # resume: the fine-tune starts at lr x this and anneals to min_lr
    period: int = 5  # periodic/delayed: epochs per frozen window and per active window (Δτ by default)
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
class PlanConfig:
    format: str = "table"  # table | json (python -m spfde.plan)


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
    experiment_name: str = "default"
    epochs: int = 160
    interval: int = 5  # Δτ (epochs): MEST structure updates, freeze steps and sieve updates (MEST: 5)
    freeze: float = 0.0  # x: share of the run's training FLOPs that layer freezing must save (0 = off)
    freeze_fraction: float = 0.6667  # candidate blocks hold about this share of the layers (paper: 2/3)
    # freeze events on structure-update epochs: T_frz a multiple of interval and > 0 (paper Sec. 4.2.1);
    # false searches T_frz epoch by epoch
    freeze_sync: bool = True
    per_block_lr: bool = True  # each block's cosine LR runs over its own active epochs (paper Sec. 4.2.1)
    sieve: float = 0.0  # y: share of the training set kept out at any time (0 = off)
    sieve_update: float = 0.1  # p: share of the partial set swapped every Δτ (our choice, see README)
    sieve_method: str = "circular"  # circular (paper) | oneshot (MEST) | random (control)
    sieve_oneshot_at: float = 0.4375  # oneshot: removal point, share of training (MEST's script: epoch 70 of 160)
    batch_size: int = 64
    eval_batch_size: int = 512
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    channels_last: bool = True  # CUDA only
    cuda_graphs: str = "auto"  # auto (on with CUDA) | on | off: replay plain training steps from CUDA graphs
    deterministic: bool = False  # cuDNN determinism on CUDA (CPU runs are deterministic anyway)
    progress: bool = True  # tqdm bar (only when stdout is a terminal)
    threads: int = 0  # CPU threads for torch; 0 = SLURM_CPUS_PER_TASK when set, else torch's default
    fresh: bool = False  # start over in a run directory that already holds results
    run_dir: Any = MISSING  # set from Hydra's output dir


# an installed wheel carries the configs in spfde/conf (setup.py); a checkout reads its conf/ directly
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"
DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line) on the first bad value. Runs before any data or model work."""
    from spfde.data import DATASETS
    from spfde.models import MODELS

    d, m, o = cfg.dataset, cfg.model, cfg.optim
    check_finite_numbers(cfg)
    _check(d.name in DATASETS, f"dataset.name={d.name!r} is unknown; choose one of {sorted(DATASETS)}")
    _check(m.name in MODELS, f"model.name={m.name!r} is unknown; choose one of {sorted(MODELS)}")
    _check(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    _check(o.name == "sgd", f"optim.name={o.name!r} is unknown; only 'sgd' is implemented")
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, optim.lr={o.lr}], got {o.min_lr}")
    _check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.schedule in ("cosine", "constant"), f"optim.schedule must be cosine or constant, got {o.schedule!r}")
    _check(0 <= o.warmup_epochs < cfg.epochs,
           f"optim.warmup_epochs must be in [0, epochs={cfg.epochs}), got {o.warmup_epochs}")
    _check(0 <= o.label_smoothing < 1, f"optim.label_smoothing must be in [0, 1), got {o.label_smoothing}")
    _check(d.num_classes >= 2, f"dataset.num_classes must be >= 2, got {d.num_classes}")
    _check(d.channels >= 1, f"dataset.channels must be >= 1, got {d.channels}")
    folder = d.name in ("imagenet", "imagefolder")
    _check(d.image_size >= 8 or (folder and d.image_size == 0),
           "dataset.image_size must be >= 8" + (" (or 0: from the images)" if folder else "")
           + f", got {d.image_size}")
    _check(d.train_size >= 1 and d.test_size >= 1, "dataset.train_size and dataset.test_size must be >= 1")
    _check(d.crop_padding >= 0, f"dataset.crop_padding must be >= 0, got {d.crop_padding}")
    _check(d.workers >= 0, f"dataset.workers must be >= 0, got {d.workers}")
    _check(0 < d.test_fraction < 1, f"dataset.test_fraction must be in (0, 1), got {d.test_fraction}")
    _check(m.width >= 1, f"model.width must be >= 1, got {m.width}")
    if m.name.startswith("resnet") and m.name != "resnet50":
        _check(m.depth >= 8 and (m.depth - 2) % 6 == 0,
               f"model.depth={m.depth} is not a CIFAR ResNet depth (6n+2: 8, 14, 20, 32, 44, 56, 110)")
    if m.name.startswith("vgg"):
        _check(m.depth in (11, 13, 16, 19), f"model.depth={m.depth} is not a VGG depth (11, 13, 16, 19)")
    _check(bool(DEVICES.match(cfg.device)), f"device={cfg.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if cfg.device.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), f"device={cfg.device} asked for, but CUDA is not available here")
    _check(cfg.cuda_graphs in ("auto", "on", "off"), f"cuda_graphs must be auto, on or off, got {cfg.cuda_graphs!r}")
    if cfg.cuda_graphs == "on":
        import torch

        _check(cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()),
               f"cuda_graphs=on needs a CUDA device (device={cfg.device}); use cuda_graphs=auto or off")
    _check(cfg.threads >= 0, f"threads must be >= 0, got {cfg.threads}")
    _check(0 <= cfg.seed < 2**32, f"seed must be in [0, 2**32), got {cfg.seed}")
    _check(d.on_bad_file in ("error", "skip"), f"dataset.on_bad_file must be error or skip, got {d.on_bad_file!r}")
    validate_loader(cfg)
    _check(cfg.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    validate_sparsity(cfg)
    validate_freeze(cfg)
    validate_sieve(cfg)
    a = cfg.analysis
    _check(a.every >= 0, f"analysis.every must be >= 0 (0 = off), got {a.every}")
    _check(a.probe_size >= 4, f"analysis.probe_size must be >= 4 (CKA needs a few samples), got {a.probe_size}")
    _check(0 < a.top_fraction <= 1, f"analysis.top_fraction must be in (0, 1], got {a.top_fraction}")
    _check(cfg.cost.memory_batch >= 1, f"cost.memory_batch must be >= 1, got {cfg.cost.memory_batch}")
    _check(cfg.cost.memory in ("paper", "autograd"), f"cost.memory must be paper or autograd, got {cfg.cost.memory!r}")
    _check(cfg.plan.format in ("table", "json"), f"plan.format must be table or json, got {cfg.plan.format!r}")
    _check(cfg.logger.name in ("wandb", "none"), f"logger.name must be wandb or none, got {cfg.logger.name!r}")
    _check(cfg.logger.mode in ("offline", "online", "disabled"),
           f"logger.mode must be offline, online or disabled, got {cfg.logger.mode!r}")


def check_finite_numbers(node, prefix: str = "") -> None:
    """NaN or infinity is never a meaningful setting (optim.lr=inf would train to NaN)."""
    import math

    for key in node:
        if OmegaConf.is_missing(node, key) or key == "run_dir":
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            check_finite_numbers(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            _check(math.isfinite(value), f"{prefix}{key} must be a finite number, got {value}")


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """Compose conf/config.yaml with command-line style overrides (tests, `spfde.plan`, prechecks)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=with_hydra)


def precheck_overrides(args: list[str]) -> None:
    """Compose and validate the command line before Hydra starts (and creates a run directory), so
    that its multi-line composition errors (unknown group option, wrong type, unknown key) become one
    line too. With -m every job of the sweep is checked before the first one starts or is queued
    (one line per bad job). Other Hydra flags are left to Hydra itself."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [plain_override(a) for a in args if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    if not flags:
        check_before_work(compose_checked(overrides))
    elif set(flags) <= {"-m", "--multirun"}:
        jobs = sweep_jobs(overrides)
        errors, checked = [], set()
        for job in jobs:
            try:
                cfg = compose_checked(job)
                same_but_seed = re.sub(r"(?m)^seed: .*$", "", OmegaConf.to_yaml(cfg))
                if same_but_seed not in checked:  # the plan does not depend on the seed
                    check_before_work(cfg)
                    checked.add(same_but_seed)
            except ConfigError as e:
                errors.append(f"job {' '.join(job)}: {e}")
        if errors:
            raise ConfigError(f"{len(errors)} of {len(jobs)} sweep jobs are invalid, none started:\n  " +
                              "\n  ".join(errors))


def plain_override(arg: str) -> str:
    """`+key=value` adds a key Hydra does not know; the schema has every key, so outside config groups
    (`+experiment=...`, `+sweep=...`) a `+` only hides a typo (`+sparsity.ration=0.5`): check it as
    `key=value`, which names an unknown key."""
    if not arg.startswith("+") or arg.startswith("++"):
        return arg
    key = arg[1:].split("=", 1)[0]
    return arg if (CONF_DIR / key.replace(".", "/")).is_dir() else arg[1:]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of `-m overrides` as Hydra's basic sweeper expands them: the command line's sweeps
    (a=1,2) crossed with the hydra.sweeper.params of the composed config (sweep presets)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        params = compose_config(fixed, with_hydra=True).hydra.sweeper.get("params") or {}
    except Exception:  # noqa: BLE001 - composition errors are reported per job below
        params = {}
    given = {o.key_or_group for o in parsed}
    extra = [f"{k}={v}" for k, v in params.items() if k not in given]
    batches = BasicSweeper.split_arguments(parser.parse_overrides([*overrides, *extra]), None)
    return [list(job) for batch in batches for job in batch]


def compose_checked(overrides: list[str]) -> DictConfig:
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        cfg = compose_config(overrides)
    except MissingConfigException as e:
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", str(e))
        if not found:
            raise ConfigError(str(e).splitlines()[0]) from None
        group, name = found.groups()
        raise ConfigError(f"{group}={name} is not an option of '{group}'; choose one of: "
                          f"{', '.join(e.options or [])}") from None
    except ConfigCompositionException as e:
        first = str(e).splitlines()[0].replace("Error merging override ", "").rstrip(".")
        cause = str(e.__cause__).splitlines()[0] if e.__cause__ else ""
        if first.startswith("Ambiguous value"):
            cause = "(to sweep over values add -m; for a list write key=[a,b])"
        raise ConfigError(f"{first}: {cause}" if cause else first) from None
    validate(cfg)
    return cfg


def check_before_work(cfg: DictConfig) -> None:
    """Checks that need more than the values but no data and no run directory: that the freezing
    target can be met (the planner needs only sizes) and that an image folder is usable (listing and
    file headers, no decoding)."""
    from spfde.data import FOLDERS, DataError, check_image_folder
    from spfde.freeze import FreezeError

    if cfg.freeze > 0:
        from spfde.plan import build_plan

        try:
            build_plan(cfg)
        except FreezeError as e:
            raise ConfigError(str(e)) from None
    if cfg.dataset.name in FOLDERS:
        try:
            check_image_folder(cfg.dataset)
        except DataError as e:
            raise ConfigError(str(e)) from None


LOADERS = ("auto", "gpu", "dali", "pil")
AUGMENTS = ("auto", "imagenet", "cifar", "none")


def dali_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` package at all
        return False


def validate_loader(cfg: DictConfig) -> None:
    """The folder-loader keys: known values, and a GPU loader only where there is a GPU to decode on."""
    d = cfg.dataset
    _check(d.loader in LOADERS, f"dataset.loader must be one of {', '.join(LOADERS)}, got {d.loader!r}")
    _check(d.augment in AUGMENTS, f"dataset.augment must be one of {', '.join(AUGMENTS)}, got {d.augment!r}")
    _check(str(d.in_memory).lower() in ("auto", "true", "false"),
           f"dataset.in_memory must be auto, true or false, got {d.in_memory!r}")
    _check(not (str(d.in_memory).lower() == "true" and d.augment == "imagenet"),
           "dataset.in_memory=true serves images at image_size, which RandomResizedCrop cannot use: set "
           "dataset.augment=cifar or none, or dataset.in_memory=false")
    if d.name in ("imagenet", "imagefolder"):
        _check(d.channels in (1, 3), f"dataset.channels must be 1 (grayscale) or 3 for image folders, got {d.channels}")
    if d.loader in ("gpu", "dali"):
        import torch

        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        _check(cuda, f"dataset.loader={d.loader} decodes images on a CUDA device, but device={cfg.device}"
               + ("" if torch.cuda.is_available() else " and CUDA is not available here")
               + "; use dataset.loader=auto or pil")
    if d.loader == "dali":
        _check(dali_installed(), "dataset.loader=dali needs NVIDIA DALI, which is not installed: "
               "pip install -e '.[dali]' (or use dataset.loader=auto, gpu or pil)")


def validate_sparsity(cfg: DictConfig) -> None:
    from spfde.sparse import METHODS

    sp = cfg.sparsity
    _check(sp.name in METHODS, f"sparsity.name={sp.name!r} is unknown; choose one of {sorted(METHODS)}")
    _check(0 <= sp.ratio < 1, f"sparsity.ratio must be in [0, 1), got {sp.ratio}")
    _check(sp.distribution in ("uniform", "erk"),
           f"sparsity.distribution must be uniform or erk, got {sp.distribution!r}")
    _check(cfg.interval >= 1, f"interval must be >= 1 epoch, got {cfg.interval}")
    if sp.name in ("rigl", "set", "itop"):
        o = sp[sp.name]
        where = f"sparsity.{sp.name}"
        if sp.name == "itop":
            _check(o.base in ("rigl", "set"), f"sparsity.itop.base must be rigl or set, got {o.base!r}")
        _check(o.delta_t >= 0, f"{where}.delta_t must be >= 0 (0 = once per epoch), got {o.delta_t}")
        _check(0 < o.drop_fraction < 1, f"{where}.drop_fraction must be in (0, 1), got {o.drop_fraction}")
        _check(o.decay in ("cosine", "constant"), f"{where}.decay must be cosine or constant, got {o.decay!r}")
        _check(0 < o.end_fraction <= 1, f"{where}.end_fraction must be in (0, 1], got {o.end_fraction}")
    if sp.name in ("snip", "grasp"):
        o = sp[sp.name]
        _check(o.scope in ("global", "layer"), f"sparsity.{sp.name}.scope must be global or layer, got {o.scope!r}")
        count = o.batches if sp.name == "snip" else o.samples_per_class
        _check(count >= 1, f"sparsity.{sp.name} needs at least one batch/sample, got {count}")
    if sp.name == "deepr":
        _check(sp.deepr.l1 >= 0 and sp.deepr.noise >= 0, "sparsity.deepr.l1 and sparsity.deepr.noise must be >= 0")
    if sp.name == "dsr":
        o = sp.dsr
        _check(o.delta_t >= 1, f"sparsity.dsr.delta_t must be >= 1 step, got {o.delta_t}")
        _check(0 < o.prune_fraction < 1, f"sparsity.dsr.prune_fraction must be in (0, 1), got {o.prune_fraction}")
        _check(o.threshold > 0 and 0 <= o.tolerance < 1,
               "sparsity.dsr.threshold must be > 0 and sparsity.dsr.tolerance in [0, 1)")
        _check(all(0 < f < 1 for f in o.double_period_at),
               f"sparsity.dsr.double_period_at must hold fractions of training in (0, 1), "
               f"got {list(o.double_period_at)}")
    if sp.name == "snfs":
        _check(0 < sp.snfs.prune_rate < 1, f"sparsity.snfs.prune_rate must be in (0, 1), got {sp.snfs.prune_rate}")
    if sp.name == "lth":
        o = sp.lth
        _check(0 < o.prune_rate < 1, f"sparsity.lth.prune_rate must be in (0, 1), got {o.prune_rate}")
        _check(0 <= o.rewind_epoch < cfg.epochs,
               f"sparsity.lth.rewind_epoch must be in [0, epochs={cfg.epochs}), got {o.rewind_epoch}")
        _check(o.scope in ("global", "layer"), f"sparsity.lth.scope must be global or layer, got {o.scope!r}")
    if sp.name == "mest":
        from spfde.sparse.masks import SparsityError
        from spfde.sparse.mest import check_bounds

        o = sp.mest
        _check(o.mode in ("em", "ems"), f"sparsity.mest.mode must be em or ems, got {o.mode!r}")
        _check(o.lambda_grad >= 0, f"sparsity.mest.lambda_grad must be >= 0, got {o.lambda_grad}")
        bounds = o[o.mode]
        try:
            check_bounds(sp.ratio, list(o.decay_at), [sp.ratio + x for x in bounds.prune_to],
                         [sp.ratio + x for x in bounds.grow_to], o.mode)
        except SparsityError as e:
            raise ConfigError(str(e)) from None


def validate_freeze(cfg: DictConfig) -> None:
    fs = cfg.freeze_scheme
    _check(0 <= cfg.freeze < 1, f"freeze must be in [0, 1) (a share of the training FLOPs), got {cfg.freeze}")
    _check(0 < cfg.freeze_fraction <= 1, f"freeze_fraction must be in (0, 1], got {cfg.freeze_fraction}")
    _check(fs.name in ("single_shot", "resume", "periodic", "delayed"),
           f"freeze_scheme.name must be single_shot, resume, periodic or delayed, got {fs.name!r}")
    _check(0 < fs.resume_fraction < 1, f"freeze_scheme.resume_fraction must be in (0, 1), got {fs.resume_fraction}")
    _check(0 < fs.resume_lr_scale <= 1, f"freeze_scheme.resume_lr_scale must be in (0, 1], got {fs.resume_lr_scale}")
    _check(fs.period >= 1, f"freeze_scheme.period must be >= 1 epoch, got {fs.period}")
    _check(0 <= fs.delay < 1, f"freeze_scheme.delay must be in [0, 1), got {fs.delay}")
    _check(not (cfg.freeze > 0 and cfg.freeze_sync and fs.name in ("periodic", "delayed")
                and fs.period % cfg.interval),
           f"freeze_scheme.period={fs.period} must be a multiple of interval={cfg.interval} so that freeze events "
           "stay on structure-update epochs (or set freeze_sync=false)")
    _check(not (cfg.freeze > 0 and cfg.sparsity.name == "lth"),
           "freeze > 0 with sparsity=lth: each LTH round retrains from a rewind point, freezing is not defined "
           "for it")


def validate_sieve(cfg: DictConfig) -> None:
    _check(0 <= cfg.sieve < 1, f"sieve must be in [0, 1) (the share of the training set kept out), got {cfg.sieve}")
    _check(0 < cfg.sieve_update <= 1, f"sieve_update must be in (0, 1], got {cfg.sieve_update}")
    _check(cfg.sieve_method in ("circular", "oneshot", "random"),
           f"sieve_method must be circular, oneshot or random, got {cfg.sieve_method!r}")
    _check(0 < cfg.sieve_oneshot_at < 1, f"sieve_oneshot_at must be in (0, 1), got {cfg.sieve_oneshot_at}")
    from spfde.sieve import SieveError, check_sieve

    try:
        check_sieve(cfg, cfg.dataset.train_size)
    except SieveError as e:
        raise ConfigError(str(e)) from None


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
