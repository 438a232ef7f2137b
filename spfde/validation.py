"""Checks of a composed config: `validate` turns every bad value into one clear line (ConfigError)
before any work starts; `precheck_overrides` checks a command line (or every job of a sweep) before
Hydra creates a run directory; `check_before_work` runs the checks that need sizes or file listings."""

from __future__ import annotations

import importlib.util
import math
import re

from omegaconf import DictConfig, OmegaConf

from spfde.config import CONF_DIR, ConfigError, compose_config

DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


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
    _check(d.timeout_s > 0, f"dataset.timeout_s must be > 0 (seconds to wait for a batch from the workers), "
           f"got {d.timeout_s}")
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
    for key in node:
        if OmegaConf.is_missing(node, key) or key == "run_dir":
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            check_finite_numbers(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            _check(math.isfinite(value), f"{prefix}{key} must be a finite number, got {value}")


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
    target can be met (the planner needs only sizes), that an image folder is usable (listing and
    file headers, no decoding) and that wandb is installed if it is to log."""
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
    # wandb is optional (a GPU machine may not have it): say so before Hydra creates a run directory
    if cfg.logger.name == "wandb" and cfg.logger.mode != "disabled" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger=wandb needs the wandb package (pip install wandb); or run with logger=none")


LOADERS = ("auto", "gpu", "dali", "pil")
AUGMENTS = ("auto", "imagenet", "cifar", "none")


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
        from spfde.data.folders import dali_installed

        _check(dali_installed(), "dataset.loader=dali needs NVIDIA DALI, which is not installed: "
               "pip install -e '.[dali]' (or use dataset.loader=auto, gpu or pil)")


def validate_sparsity(cfg: DictConfig) -> None:
    from spfde.sparse import METHODS, SparsityError

    sp = cfg.sparsity
    _check(sp.name in METHODS, f"sparsity.name={sp.name!r} is unknown; choose one of {sorted(METHODS)}")
    _check(0 <= sp.ratio < 1, f"sparsity.ratio must be in [0, 1), got {sp.ratio}")
    _check(sp.distribution in ("uniform", "erk"),
           f"sparsity.distribution must be uniform or erk, got {sp.distribution!r}")
    _check(cfg.interval >= 1, f"interval must be >= 1 epoch, got {cfg.interval}")
    try:
        METHODS[sp.name].check(cfg)  # each method checks its own options
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
    from spfde.sparse import METHODS

    reason = METHODS[cfg.sparsity.name].no_freezing
    _check(not (cfg.freeze > 0 and reason), f"freeze > 0 with sparsity={cfg.sparsity.name}: {reason}")


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


