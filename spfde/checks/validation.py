"""Checks of a composed config: `validate` turns every bad value into one clear line (ConfigError)
before any work starts; `check_before_work` runs the checks that need sizes or file listings; the
overrides of a command line parse, compose and expand into a sweep's jobs here too."""

from __future__ import annotations

# torch, Hydra, omegaconf and the registries load inside the checks that need them: keeps start-up fast
# for tab completion and the commands that only check a command line
import copy
import functools
import importlib.util
import math
import os
import re
from fnmatch import fnmatch
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from spfde.config import (
    USER_CONFIG_ENV,
    Config,
    ConfigError,
    compose_config,
    group_options,
    is_group,
    user_config_dir,
)

DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
CLASS_COUNTS = {"cifar10": 10, "cifar100": 100, "digits": 10}  # fixed by the data (folders are counted, fake any)


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
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    _check(cfg.threads > 0 or slurm_cpus == "" or (slurm_cpus.isdigit() and int(slurm_cpus) > 0),
           f"SLURM_CPUS_PER_TASK={slurm_cpus!r} is not a number of CPUs (the run takes its thread count from it): "
           "fix or unset it, or set threads=N")
    _check(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    _check(o.name == "sgd", f"optim.name={o.name!r} is unknown; only 'sgd' is implemented")
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, optim.lr={o.lr}], got {o.min_lr}")
    _check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.schedule in ("cosine", "constant", "step"),
           f"optim.schedule must be cosine, constant or step, got {o.schedule!r}")
    _check(all(0 < f < 1 for f in o.step_at) and list(o.step_at) == sorted(o.step_at),
           f"optim.step_at must be increasing fractions of training in (0, 1), got {list(o.step_at)}")
    _check(0 < o.step_gamma <= 1, f"optim.step_gamma must be in (0, 1], got {o.step_gamma}")
    _check(0 <= o.warmup_epochs < cfg.epochs,
           f"optim.warmup_epochs must be in [0, epochs={cfg.epochs}), got {o.warmup_epochs}")
    _check(0 <= o.label_smoothing < 1, f"optim.label_smoothing must be in [0, 1), got {o.label_smoothing}")
    _check(d.num_classes >= 2, f"dataset.num_classes must be >= 2, got {d.num_classes}")
    _check(CLASS_COUNTS.get(d.name, d.num_classes) == d.num_classes,
           f"dataset.num_classes={d.num_classes}, but {d.name} has {CLASS_COUNTS.get(d.name)} classes: leave "
           "dataset.num_classes out (dataset=fake takes any class count)")
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
    _check(cfg.plan.calibration_steps >= 1, f"plan.calibration_steps must be >= 1, got {cfg.plan.calibration_steps}")
    _check(0 <= cfg.plan.budget <= 1, f"plan.budget is a fraction of the run's training FLOPs without freezing and "
                                      f"sieving, in (0, 1] (0 = off), got {cfg.plan.budget}")
    _check(cfg.plan.budget_hours >= 0, f"plan.budget_hours must be >= 0 (0 = off), got {cfg.plan.budget_hours}")
    _check(not (cfg.plan.budget and cfg.plan.budget_hours), "plan.budget and plan.budget_hours are two budgets: "
                                                            "give one of them")
    _check(not cfg.plan.budget_hours or cfg.plan.calibrate, "plan.budget_hours needs measured step times: add "
                                                            "plan.calibrate=true")
    _check(not cfg.plan.results or cfg.plan.budget or cfg.plan.budget_hours,
           "plan.results chooses among a sweep's runs within a budget: add plan.budget=<fraction> or plan.budget_hours")
    _check(cfg.logger.name in ("wandb", "none"), f"logger.name must be wandb or none, got {cfg.logger.name!r}")
    _check(cfg.logger.mode in ("offline", "online", "disabled"),
           f"logger.mode must be offline, online or disabled, got {cfg.logger.mode!r}")
    validate_world(cfg)


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


def is_hydra(arg: str) -> bool:
    """Hydra's own settings (hydra.run.dir=..., hydra/launcher=...): not part of the run's config."""
    return arg.lstrip("+~").startswith("hydra")


def is_searchpath(arg: str) -> bool:
    return arg.lstrip("+").startswith("hydra.searchpath=")


def check_user_config_dir() -> None:
    """A SPFDE_CONFIG_DIR that is not a directory would be skipped silently by Hydra (its configs 'not an option')."""
    user = user_config_dir()
    _check(user is None or user.is_dir(), f"{USER_CONFIG_ENV}={user} is not a directory: create it (with your "
                                          f"configs in conf/'s layout, e.g. launcher/mycluster.yaml) or unset it")


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of each override; a syntax error becomes one line (Hydra prints 35)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for arg in overrides:
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as e:
            raise ConfigError(f"cannot parse the override {arg!r}: {str(e).splitlines()[0]}; check its brackets and "
                              "quotes (https://hydra.cc/docs/advanced/override_grammar/basic/)") from None
    return parsed


def check_output_dirs(parsed: list) -> None:
    """An explicit hydra.run.dir or hydra.sweep.dir (of the parsed overrides) must be a directory or
    creatable as one (Hydra would end in a traceback after composing)."""
    for o in parsed:
        if o.key_or_group not in ("hydra.run.dir", "hydra.sweep.dir") or o.is_sweep_override():
            continue
        value = str(o.value())
        _check(value.strip() != "", f"{o.key_or_group}= is empty: give a directory (it is created if missing), or "
                                    f"leave {o.key_or_group} out for the default")
        if "${" in value:  # an interpolation: Hydra resolves it
            continue
        path = Path(value).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if existing == path:
            _check(path.is_dir(), f"{o.key_or_group}={value} is a file, not a directory: give a directory (it is "
                                  "created if missing)")
        else:
            _check(existing.is_dir(), f"{o.key_or_group}={value} cannot be created: {existing} is a file")
            _check(os.access(existing, os.W_OK | os.X_OK),
                   f"{o.key_or_group}={value} cannot be created: {existing} is not writable for you; give a "
                   "directory you can write to")


def compose_checked(overrides: list[str], values: bool = True) -> DictConfig:
    """Compose a command line's overrides and validate the result (`values=False`: composition only,
    which checks keys and types), every error as one line (ConfigError). The schema has every key, so
    outside config groups `~key` removes a key every run reads, `+key=v` appends to a key that exists and
    `++key=v` either sets one (as key=v) or adds one nothing reads: each is refused or checked as key=v."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    parse_overrides(overrides)
    plain, appended = [], []
    for arg in overrides:
        key = arg.lstrip("+~").split("=", 1)[0]
        if is_group(key):
            plain.append(arg)  # Hydra's defaults-list syntax (+sweep=..., ~launcher)
            continue
        _check(not arg.startswith("~"), f"{arg!r} removes {key}, which every run reads (each key has a default in "
                                        f"spfde/config.py): set it to another value instead ({key}=...)")
        if arg.startswith("+") and not arg.startswith("++"):
            appended.append(arg)
        plain.append(arg.lstrip("+"))
    try:
        cfg = compose_config(plain)
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
        if first.startswith("Could not override '"):
            cause += similar_key(first.split("'")[1])
        raise ConfigError(f"{first}: {cause}" if cause else first) from None
    if appended:
        arg = appended[0]
        raise ConfigError(f"{arg}: {arg[1:].split('=', 1)[0]} is a key of the config already; write {arg[1:]} "
                          "(a + adds a key the config does not have)")
    check_booleans(overrides)
    if values:
        try:
            validate(cfg)
        except InterpolationResolutionError as e:  # optim.lr=${oops}: OmegaConf's chained traceback
            raise ConfigError(f"{e.full_key}: {str(e).splitlines()[0]} (an override's ${{...}} names a key or "
                              "resolver that does not exist)") from None
        except MissingMandatoryValue as e:  # its group was removed (~logger)
            group = str(e.full_key).split(".")[0]
            way_out = (" or ".join(f"{group}={o}" for o in group_options(group)) if is_group(group)
                       else f"{e.full_key}=...")
            raise ConfigError(f"{e.full_key} has no value: set {way_out}") from None
    return cfg


@functools.cache  # once per process: building it takes as long as a sixth of a composition, and every job asks
def config_schema() -> DictConfig:
    """The config's schema (spfde/config.py), read-only: each key with its type and default."""
    schema = OmegaConf.structured(Config)
    OmegaConf.set_readonly(schema, True)
    return schema


def check_booleans(overrides: list[str]) -> None:
    """A yes/no key takes true or false: OmegaConf would read any other number as true (plan.calibrate=2)."""
    from omegaconf import OmegaConf
    from omegaconf.nodes import BooleanNode

    schema = config_schema()
    for o in parse_overrides([a for a in overrides if not is_group(a.lstrip("+~").split("=", 1)[0])]):
        parent, _, leaf = o.key_or_group.rpartition(".")
        node = OmegaConf.select(schema, parent, default=None) if parent else schema
        if not isinstance(node, DictConfig) or leaf not in node or not isinstance(node._get_node(leaf), BooleanNode):
            continue  # unknown keys are the composition's to name
        values = o.value().list if o.is_sweep_override() and hasattr(o.value(), "list") else [o.value()]
        for value in values:
            _check(isinstance(value, bool) or value is None,
                   f"{o.key_or_group} is true or false, got {value!r}")


def similar_key(key: str) -> str:
    """'; did you mean <key>?' for a mistyped key, from the keys next to it in the schema ('' if none is close)."""
    import difflib

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config_schema(), parent) if parent else config_schema()
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(leaf, list(node.keys()), n=1)
    return f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""


def sweep_jobs(overrides: list[str]) -> tuple[list[list[str]], dict[str, str]]:
    """The jobs of `-m overrides` to check: the command line's sweeps (a=1,2, choice(), range(), glob())
    crossed with the hydra.sweeper.params of the composed config (sweep presets), as Hydra's basic sweeper
    expands them. Values in another sweeper's syntax (interval(), tag(log, interval())) are drawn by that
    sweeper during the sweep: such a key is left out of the jobs (it keeps its default there) and returned
    with a stand-in (override -> key=middle of its interval), to check that the key takes such a value."""
    import itertools

    parsed = parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        params = compose_config(fixed, with_hydra=True).hydra.sweeper.get("params") or {}
    except Exception:  # noqa: BLE001 - composition errors are reported per job
        params = {}
    given = {o.key_or_group for o in parsed}
    parsed += parse_overrides([f"{k}={v}" for k, v in params.items() if k not in given])
    values, standins = {}, {}
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            values[key] = [o.input_line]
        elif o.value_type.name == "GLOB_CHOICE_SWEEP":
            values[key] = [f"{key}={v}" for v in o.value().filter(group_options(o.key_or_group))]
            _check(bool(values[key]), f"{o.input_line} matches no option of '{o.key_or_group}': the sweep has no jobs")
        elif o.is_discrete_sweep():
            values[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            _check(bool(values[key]), f"{o.input_line} gives no values: the sweep has no jobs")
        elif o.value_type.name == "INTERVAL_SWEEP":
            standins[o.input_line] = f"{key}={(o.value().start + o.value().end) / 2:g}"
        else:  # a sweep type Hydra adds later: its key at least
            standins[o.input_line] = o.input_line
    return [list(job) for job in itertools.product(*values.values())], standins


def sample_values(o) -> list[str]:
    """A few values of a sweep override (parsed), as `key=value` overrides: both ends of an interval() (also
    under tag(log, ...)), the first and last of a range(), every value of a list, choice() or glob()."""
    key = o.get_key_element()
    if o.value_type.name == "INTERVAL_SWEEP":
        v = o.value()
        return [f"{key}={v.start}", f"{key}={v.end}"]
    if o.value_type.name == "GLOB_CHOICE_SWEEP":
        return [f"{key}={v}" for v in o.value().filter(group_options(o.key_or_group))]
    if not o.is_sweep_override():
        return [o.input_line]
    values = list(o.sweep_string_iterator())
    if o.value_type.name == "RANGE_SWEEP":
        values = list(dict.fromkeys(values[:1] + values[-1:]))
    return [f"{key}={v}" for v in values]


def checked_sweep(overrides: list[str], data: bool = True,
                  outcome: str = "none started") -> tuple[list[tuple[list[str], DictConfig]], list[str]]:
    """Check every job of `-m overrides` (`check_before_work` once per configuration: seeds share it) and
    return the jobs with their configs, and the overrides left to another sweeper (see `sweep_jobs`).
    One line per bad job; one line in all when every job fails alike."""
    jobs, standins = sweep_jobs(overrides)
    for given, standin in standins.items():  # the key exists and takes such a value
        try:
            compose_checked([*jobs[0], standin], values=False)
        except ConfigError as e:
            raise ConfigError(f"{given}: {e} ({outcome})") from None
        for end in sample_values(parse_overrides([given])[0]):  # a drawing sweeper may draw either end
            try:
                check_before_work(compose_checked([*jobs[0], end]), data=False)
            except ConfigError as e:
                raise ConfigError(f"{given} at {end}: {e} ({outcome})") from None
    errors, checked, configs = [], set(), []
    for job in jobs:
        try:
            cfg = compose_checked(job)
            same_but_seed = repr({k: v for k, v in OmegaConf.to_container(cfg).items() if k != "seed"})
            if same_but_seed not in checked:
                check_before_work(cfg, data)
                checked.add(same_but_seed)
            configs.append((job, cfg))
        except ConfigError as e:
            errors.append((" ".join(job), str(e)))
    alike = {e for _, e in errors}
    if len(errors) == len(jobs) and len(alike) == 1:
        raise ConfigError(f"{alike.pop()} (all {len(jobs)} sweep jobs; {outcome})")
    if errors:
        raise ConfigError(f"{len(errors)} of {len(jobs)} sweep jobs are invalid, {outcome}:\n  "
                          + "\n  ".join(f"job {job}: {e}" for job, e in errors))
    return configs, list(standins)


def check_before_work(cfg: DictConfig, data: bool = True) -> None:
    """Checks that need more than the values but no run directory, before any work: with `data`, that the
    data is there (an image folder listed, 16 bytes of each file read, nothing decoded; CIFAR's files, or
    their download now) and that the sieve leaves a batch of the folder's own image count; then the model
    and its sparse method on the meta device (no memory, no data): no layer left without weights, every
    `sparsity.dense_layers` pattern names a layer, the freezing target can be reached."""
    from spfde.data import FOLDERS, DataError
    from spfde.training.sieve import SieveError, check_sieve

    d = cfg.dataset
    try:
        if data and d.name in FOLDERS:
            from spfde.data.folders import list_image_folder

            listing = list_image_folder(d)
            cfg = copy.deepcopy(cfg)  # the run reads sizes and classes from the folder
            d = cfg.dataset
            d.train_size, d.test_size, d.num_classes = listing.train_images, listing.val_images, len(listing.classes)
            check_sieve(cfg, d.train_size)
        elif data and d.name in ("cifar10", "cifar100"):
            check_cifar(d)
    except (DataError, SieveError) as e:
        raise ConfigError(str(e)) from None
    check_model(cfg)
    # wandb is optional (a GPU machine may not have it): say so before Hydra creates a run directory
    if cfg.logger.name == "wandb" and cfg.logger.mode != "disabled" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger=wandb needs the wandb package (pip install wandb); or run with logger=none")
    if cfg.logger.name == "wandb" and cfg.logger.mode == "online":
        problem = wandb_online_problem()
        _check(problem is None, str(problem))


@functools.cache  # once per process: every job of a sweep asks
def wandb_online_problem(timeout_s: float = 5.0) -> str | None:
    """Why logger.mode=online cannot work here (None if it can): it needs a wandb API key and a network that reaches
    the wandb server, without which wandb.init waits (about 90 s) after the run directory exists, then fails."""
    import netrc
    import socket
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(url).hostname or "api.wandb.ai"
    offline = "or keep logger.mode=offline (the default) and `wandb sync` the runs later"
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            key = (netrc.netrc().authenticators(host) or (None, None, None))[2]
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        return f"logger.mode=online needs a wandb API key for {host} (WANDB_API_KEY, or `wandb login`), {offline}"
    try:
        socket.create_connection((host, urlparse(url).port or 443), timeout=timeout_s).close()
    except OSError as e:
        return f"logger.mode=online: {host} cannot be reached ({e.strerror or e}), {offline}"
    return None


def check_cifar(d: DictConfig) -> None:
    """CIFAR's files are in dataset.root, or are downloaded now, before a run directory exists (offline:
    one line saying where to put them)."""
    import torchvision.datasets as tvd

    from spfde.data.sources import CIFAR_FILES, load_cifar

    cls = getattr(tvd, CIFAR_FILES[d.name][0])
    folder = Path(os.path.abspath(d.root)) / cls.base_folder  # as load_cifar reads it
    if not all((folder / name).is_file() for name, _ in cls.train_list + cls.test_list):
        load_cifar(d)  # downloads, or raises DataError naming the archive and where it goes


def check_model(cfg: DictConfig) -> None:
    """The model and its sparse method built on the meta device, as the run will build them: the
    method's targets (a layer left with no weights), `sparsity.dense_layers` (each pattern names a conv or
    linear layer), and with freezing the plan's solver (a target out of reach)."""
    from spfde.data.folders import planned_image_size
    from spfde.sparse import SparsityError
    from spfde.training.build import build_core
    from spfde.training.cost import epoch_batches
    from spfde.training.freeze import FreezeError, make_freeze_plan
    from spfde.training.sieve import sieve_epochs

    d = cfg.dataset
    batches = [epoch_batches(n, cfg.batch_size) for n in sieve_epochs(cfg, d.train_size)]
    try:  # one meta build per model and input shape in a process (spfde.training.build.meta_model)
        core = build_core(cfg, d.num_classes, d.channels, planned_image_size(d), [len(b) for b in batches],
                          device="meta")
        if cfg.freeze > 0:  # the solver needs the FLOPs of each block
            make_freeze_plan(cfg, core.model, core.method, core.cost_model, batches)
    except (SparsityError, FreezeError) as e:
        raise ConfigError(str(e)) from None
    check_dense_layers(cfg, core.model)


def check_dense_layers(cfg: DictConfig, model) -> None:
    """Each `sparsity.dense_layers` pattern names a conv or linear layer of the model."""
    from spfde.sparse.masks import masked_layers

    layers = list(masked_layers(model, []))
    for pattern in cfg.sparsity.dense_layers:
        _check(any(fnmatch(name, pattern) for name in layers),
               f"sparsity.dense_layers: {pattern!r} names no conv or linear layer of {cfg.model.name}; its layers "
               f"are {', '.join(layers)} (fnmatch patterns such as 'blocks.1.*' work too)")


def validate_world(cfg: DictConfig) -> None:
    """Started as one of several ranks (torchrun, a multi-task SLURM job: read from the environment), the
    settings the ranks cannot serve, before any of them starts work."""
    from spfde.training.distributed import DistributedError, World, check_world, environment

    found = environment()
    if found is None or found[1] <= 1:
        return
    try:
        check_world(cfg, World(*found))
    except DistributedError as e:
        raise ConfigError(str(e)) from None


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
    _check(not (d.loader == "dali" and d.augment == "cifar"), "dataset.loader=dali implements augment=imagenet or "
           "none: use dataset.loader=gpu or pil with dataset.augment=cifar")
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
    from spfde.sparse.masks import MASKING_RULES

    sp = cfg.sparsity
    _check(sp.name in METHODS, f"sparsity.name={sp.name!r} is unknown; choose one of {sorted(METHODS)}")
    _check(0 <= sp.ratio < 1, f"sparsity.ratio must be in [0, 1), got {sp.ratio}")
    _check(sp.distribution in ("uniform", "erk"),
           f"sparsity.distribution must be uniform or erk, got {sp.distribution!r}")
    _check(sp.masked in MASKING_RULES, f"sparsity.masked must be one of {', '.join(MASKING_RULES)} (which layers are "
           f"masked: MEST's, RigL's, ITOP's code), got {sp.masked!r}")
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
    from spfde.training.sieve import SieveError, check_sieve

    try:
        check_sieve(cfg, cfg.dataset.train_size)
    except SieveError as e:
        raise ConfigError(str(e)) from None


