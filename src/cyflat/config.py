"""Run configuration: typed dataclasses, shipped YAML presets and ``key=value`` overrides.

Configs are OmegaConf structured configs, so a misspelled key is an error that names the
nearest valid key, and every value is type-checked.  Shipped presets live in
``cyflat/configs/*.yaml`` (``cyflat train dwork``); any other argument is read as a path.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

__all__ = ["Config", "ConfigError", "config_hash", "list_presets", "load_config", "to_yaml"]


class ConfigError(ValueError):
    """A configuration problem (unknown key, wrong type, bad value)."""


@dataclass
class VarietyConfig:
    #: ``fermat``, ``dwork``, ``quintic-2param`` or a polynomial string in z0..zn.
    name: str = "dwork"
    #: complex dimension for the ``fermat``/``dwork`` presets (3: the quintic).
    dim: int = 3
    #: moduli names when ``name`` is a polynomial string.
    params: list[str] = field(default_factory=list)


@dataclass
class ModuliConfig:
    #: ``box`` (|Re - c|, |Im - c| <= half_width per modulus), ``disk`` (|psi - c| <= radius)
    #: or ``point`` (a single fixed variety at ``center``).
    region: str = "box"
    #: centre per modulus, as strings parsed by ``complex()`` (``"1+0.5j"``).
    center: list[str] = field(default_factory=lambda: ["0"])
    half_width: float = 10.0
    radius: float = 10.0
    #: moduli closer than this to a known singular member are never drawn.
    exclude_singular: float = 0.1


@dataclass
class ModelConfig:
    #: ``hnet`` (HNetMLP: moduli -> H) or ``free`` (H itself, one fixed variety).
    kind: str = "hnet"
    #: ``reduced`` or ``full`` monomial basis.
    basis: str = "full"
    k: int = 3
    layers: list[int] = field(default_factory=lambda: [128, 128])
    powers: list[int] = field(default_factory=lambda: [1, 2, 3])
    activation: str = "sigmoid"
    dropout: float = 0.0
    #: input feature groups of HNetMLP: any of ``angle`` (arg psi_j), ``abs`` (|f|),
    #: ``parts`` (Re f, Im f) for the moduli monomials f (see :class:`cyflat.ml.HNetMLP`).
    features: list[str] = field(default_factory=lambda: ["angle", "abs", "parts"])
    sig_suppress: bool = True
    init_fluctuation: float = 0.0
    #: ``identity`` or ``donaldson`` (free H only: start from the balanced metric).
    init: str = "identity"


@dataclass
class TrainConfig:
    seed: int = 0
    #: ``float64`` or ``float32``.
    dtype: str = "float64"
    steps: int = 100_000
    #: wall-clock budget for the optimisation in seconds (0: none).
    time_limit: float = 240.0
    batch_moduli: int = 4
    batch_points: int = 500
    buffer_size: int = 50
    #: ``variance`` (the Monge-Ampere loss, :func:`cyflat.ml.variance_eta_loss`) or
    #: ``sigma`` (the sigma accuracy itself, :func:`cyflat.ml.sigma_loss`).
    loss: str = "variance"
    #: any ``optax`` optimiser by name (adam, adamw, sgd, lion, ...).
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    #: ``constant``, ``cosine`` (decay to lr * final_lr_fraction over ``steps``) or ``exponential``.
    schedule: str = "constant"
    final_lr_fraction: float = 0.1
    decay_rate: float = 0.5
    decay_steps: int = 10_000
    grad_clip: float = 0.0
    #: exponential moving average of the parameters, ``avg += (1 - ema_decay) (params - avg)``
    #: after every step (0: off).  Validation, evaluation and the returned parameters use
    #: the average: with a constant learning rate it removes the optimiser's fluctuation
    #: around the minimum.
    ema_decay: float = 0.0
    log_every: int = 50
    val_every: int = 500
    val_moduli: int = 8
    val_points: int = 2000
    checkpoint_every: int = 500
    #: stop after this many consecutive non-finite steps.
    max_bad_steps: int = 20


@dataclass
class EvalConfig:
    #: grid points per real direction (one complex modulus: grid x grid moduli).
    grid: int = 5
    #: random held-out moduli when there are several moduli.
    random_moduli: int = 25
    points: int = 20_000
    seed: int = 12345


@dataclass
class Config:
    name: str = "dwork"
    variety: VarietyConfig = field(default_factory=VarietyConfig)
    moduli: ModuliConfig = field(default_factory=ModuliConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: where runs go (a new sub-directory per run unless ``run_dir`` is set).
    out_dir: str = "runs"
    run_dir: str = ""


def list_presets() -> list[str]:
    """Names of the shipped configs."""
    return sorted(p.name[:-5] for p in resources.files("cyflat.configs").iterdir() if p.name.endswith(".yaml"))


def _all_keys(node, prefix=""):
    out = []
    for key in node:
        value = node[key]
        full = f"{prefix}{key}"
        out.append(full)
        if OmegaConf.is_dict(value):
            out.extend(_all_keys(value, full + "."))
    return out


def _suggest(bad: str, schema) -> str:
    keys = _all_keys(schema)
    close = difflib.get_close_matches(bad, keys, n=1, cutoff=0.5)
    if not close:
        leaf = bad.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] in difflib.get_close_matches(leaf, [x.rsplit(".", 1)[-1] for x in keys], n=1, cutoff=0.6)]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _merge(schema, other, what):
    try:
        return OmegaConf.merge(schema, other)
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(f"unknown config key '{key}' in {what}{_suggest(str(key), schema)}") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "")
        msg = str(err).splitlines()[0]
        raise ConfigError(f"bad value for '{key}' in {what}: {msg}") from None


def load_config(source: str | None = None, overrides: list[str] = ()) -> Config:
    """Build a :class:`Config` from a preset name or YAML path plus ``key=value`` overrides."""
    schema = OmegaConf.structured(Config)
    cfg = schema
    if source:
        if source in list_presets():
            text = resources.files("cyflat.configs").joinpath(source + ".yaml").read_text()
            what = f"preset '{source}'"
        else:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(
                    f"config '{source}' is neither a shipped preset ({', '.join(list_presets())}) nor a file"
                )
            text = path.read_text()
            what = str(path)
        try:
            loaded = OmegaConf.create(text)
        except Exception as err:  # yaml errors
            raise ConfigError(f"cannot read config {what}: {err}") from None
        cfg = _merge(cfg, loaded, what)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            dot = OmegaConf.from_dotlist([item])
        except Exception as err:
            raise ConfigError(f"cannot parse override '{item}': {err}") from None
        cfg = _merge(cfg, dot, f"override '{item}'")
    obj = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def validate(cfg: Config) -> None:
    """Check values that types alone do not catch; raises :class:`ConfigError`."""
    t, m, mod = cfg.train, cfg.model, cfg.moduli
    checks = [
        (m.kind in ("hnet", "free"), "model.kind must be 'hnet' or 'free'"),
        (m.basis in ("full", "reduced"), "model.basis must be 'full' or 'reduced'"),
        (m.k >= 1, "model.k must be >= 1"),
        (m.init in ("identity", "donaldson"), "model.init must be 'identity' or 'donaldson'"),
        (
            len(m.features) > 0 and set(m.features) <= {"angle", "abs", "parts"},
            "model.features must be a non-empty list of 'angle', 'abs', 'parts'",
        ),
        (all(x >= 1 for x in m.layers), "model.layers must be positive sizes"),
        (all(p >= 1 for p in m.powers) and len(m.powers) > 0, "model.powers must be positive integers"),
        (0 <= m.dropout < 1, "model.dropout must be in [0, 1)"),
        (mod.region in ("box", "disk", "point"), "moduli.region must be 'box', 'disk' or 'point'"),
        (mod.half_width > 0 and mod.radius > 0, "moduli.half_width and moduli.radius must be > 0"),
        (t.dtype in ("float32", "float64"), "train.dtype must be 'float32' or 'float64'"),
        (t.steps >= 1, "train.steps must be >= 1"),
        (t.time_limit >= 0, "train.time_limit must be >= 0"),
        (t.batch_moduli >= 1 and t.batch_points >= 1, "train.batch_moduli and train.batch_points must be >= 1"),
        (t.buffer_size >= 1, "train.buffer_size must be >= 1"),
        (t.learning_rate > 0, "train.learning_rate must be > 0"),
        (t.schedule in ("constant", "cosine", "exponential"), "train.schedule must be constant, cosine or exponential"),
        (t.loss in ("variance", "sigma"), "train.loss must be 'variance' or 'sigma'"),
        (0 <= t.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
        (t.log_every >= 1 and t.val_every >= 1 and t.checkpoint_every >= 1, "train.*_every must be >= 1"),
        (t.val_moduli >= 1 and t.val_points >= 2, "train.val_moduli >= 1 and train.val_points >= 2"),
        (t.max_bad_steps >= 1, "train.max_bad_steps must be >= 1"),
        (cfg.eval.grid >= 1 and cfg.eval.points >= 2, "eval.grid >= 1 and eval.points >= 2"),
        (m.kind == "hnet" or mod.region == "point", "model.kind=free needs moduli.region=point (one fixed variety)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    for c in mod.center:
        try:
            parse_complex(c)
        except ValueError:
            raise ConfigError(f"moduli.center entry {c!r} is not a complex number") from None


def parse_complex(text) -> complex:
    """``'1+2i'``, ``'1+2j'``, ``'0.5'`` -> complex."""
    return complex(str(text).replace(" ", "").replace("i", "j"))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_hash(cfg: Config, sections=("variety", "moduli", "model")) -> str:
    """Hash of the parts of the config a checkpoint depends on."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg))
    sub = {s: data[s] for s in sections}
    sub["dtype"] = data["train"]["dtype"]
    return hashlib.sha256(json.dumps(sub, sort_keys=True).encode()).hexdigest()[:16]
