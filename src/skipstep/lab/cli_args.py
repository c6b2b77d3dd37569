"""Command-line building blocks shared by the harness's subcommands: the parser and help formatter (one-line
errors, defaults shown only where they mean something), option types that name what they accept, the common
run options, and the checks of values the API takes too (device, seed)."""

from __future__ import annotations

import argparse
import math

import torch

from .models import CLIP_MODES

#: Samples per batch of the benchmark, the tuner and the demo (part of a run's configuration: it fixes the
#: per-step noise streams).
DEFAULT_BATCH_SIZE = 500
#: Seeds are 63-bit: torch.Generator.manual_seed and the derived seeds take them.
SEED_LIMIT = 2**63


class OptionValueError(ValueError, argparse.ArgumentTypeError):
    """A bad option value: a ValueError for the API, and argparse reports it as ``argument --x: <message>``."""


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, ``skipstep <command>: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it means something: not for required options, flags, options
    without a default, or help texts that already state it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or "default" in text):
            return text
        if isinstance(action.default, (list, tuple)):
            return f"{text} (default: {','.join(str(v) for v in action.default)})"
        return super()._get_help_string(action)


# --------------------------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------------------------
def _integer(text, what: str) -> int:
    if isinstance(text, bool):
        raise OptionValueError(f"expected {what}, got {text!r}")
    try:
        return int(str(text).strip()) if not isinstance(text, int) else int(text)
    except ValueError:
        raise OptionValueError(f"expected {what}, got {text!r}") from None


def positive_int(text) -> int:
    value = _integer(text, "a positive integer")
    if value < 1:
        raise OptionValueError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text) -> int:
    value = _integer(text, "an integer >= 0")
    if value < 0:
        raise OptionValueError(f"expected an integer >= 0, got {text!r}")
    return value


def check_seed(value, option: str | None = None) -> int:
    """A seed: an integer with ``0 <= seed < 2**63`` (``option`` names it in the error; argparse adds its own)."""
    prefix = f"{option}: " if option else ""
    try:
        seed = _integer(value, "an integer seed")
    except OptionValueError as err:
        raise OptionValueError(prefix + str(err)) from None
    if not 0 <= seed < SEED_LIMIT:
        raise OptionValueError(f"{prefix}expected a seed with 0 <= seed < 2**63, got {value!r}")
    return seed


def _list(text: str, item, what: str) -> list:
    parts = [v for v in str(text).replace(" ", "").split(",") if v]
    if not parts:
        raise OptionValueError(f"expected {what}, got {text!r}")
    return [item(v) for v in parts]


def int_list(text: str) -> list[int]:
    return _list(text, lambda v: _integer(v, "comma-separated integers"), "comma-separated integers")


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers (an NFE list)."""
    return _list(text, positive_int, "comma-separated positive integers")


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds, each ``0 <= seed < 2**63``."""
    return _list(text, check_seed, "comma-separated seeds")


def guidance_scale(text) -> float:
    """A classifier-free guidance scale: a finite number >= 0 (1 = the plain conditional model)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise OptionValueError(f"expected a guidance scale, a finite number >= 0 (1 = the plain conditional "
                               f"model, 0 = unconditional), got {text!r}")
    return value


def guidance_scale_list(text: str) -> list[float]:
    """Comma-separated guidance scales (each a separate set of cells and references)."""
    return _list(text, guidance_scale, "comma-separated guidance scales (numbers >= 0)")


def finite_float(text) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise OptionValueError(f"expected a finite number, got {text!r}")
    return value


def name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def check_device(device) -> str:
    """``device`` if this torch build can compute on it; otherwise an error that says what is available."""
    text = str(device)
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise OptionValueError(f"--device {text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return text
    if dev.type == "meta":
        raise OptionValueError("--device meta holds no data, so nothing can be sampled there; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionValueError(f"--device {text}: this torch build cannot use CUDA here "
                                   "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionValueError(f"--device {text}: there are only {torch.cuda.device_count()} CUDA device(s) "
                                   f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
        return text
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionValueError(f"--device {text}: MPS is not available in this torch build; use --device cpu")
        return text
    try:
        torch.empty(1, device=dev)
    except Exception as err:  # noqa: BLE001 - any backend's refusal
        raise OptionValueError(f"--device {text} cannot be used ({str(err).splitlines()[0]}); "
                               "use cpu or cuda") from None
    return text


# --------------------------------------------------------------------------------------------------------------
# shared options
# --------------------------------------------------------------------------------------------------------------
def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="torch intra-op CPU threads (default 1: on a busy machine oversubscribed threads made the "
                        "digits UNet 15-30x slower; 0 keeps torch's default)")


def add_common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"samples per batch (default {DEFAULT_BATCH_SIZE}; part of the configuration because it "
                        "fixes the per-step noise streams)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--clip", choices=CLIP_MODES, default="model",
                   help="clip x0_hat to the data range: as the model's scheduler config says (clip_sample), or "
                        "force it on/off for every sampler that can clip")
    add_threads_arg(p)


def add_model_args(p: argparse.ArgumentParser, guidance_list: bool = False) -> None:
    """``--guidance-scale`` (one value, or a comma list for bench), ``--null-label`` and ``--flow-mu``."""
    if guidance_list:
        p.add_argument("--guidance-scale", dest="guidance_scales", type=guidance_scale_list, default=None,
                       help="class-conditional models: comma-separated classifier-free guidance scales w >= 0, each "
                            "its own set of cells and reference set (1 = the plain conditional model, 0 = "
                            "unconditional; default: 1). One batched call of both branches counts as 1 NFE")
    else:
        p.add_argument("--guidance-scale", type=guidance_scale, default=None,
                       help="class-conditional models: the classifier-free guidance scale w >= 0 (1 = the plain "
                            "conditional model, 0 = unconditional; default: 1)")
    p.add_argument("--null-label", type=non_negative_int, default=None,
                   help="class-conditional models: the unconditional (null) class label, when the model directory's "
                        "training_info.json / model_index.json do not say (null_class_label)")
    p.add_argument("--flow-mu", type=finite_float, default=None,
                   help="flow models with dynamic shifting (use_dynamic_shifting): sample with this fixed mu "
                        "(the shift exp(mu)); refused for other models")


def model_options(args: argparse.Namespace) -> dict:
    """The ``load_model`` options of ``--null-label`` / ``--flow-mu`` (only those given)."""
    return {k: v for k, v in {"null_label": getattr(args, "null_label", None),
                              "flow_mu": getattr(args, "flow_mu", None)}.items() if v is not None}


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (0 or absent: leave torch's default)."""
    threads = getattr(args, "threads", 0)
    if threads and threads > 0:
        torch.set_num_threads(int(threads))


__all__ = ["DEFAULT_BATCH_SIZE", "SEED_LIMIT", "CommandParser", "HelpFormatter", "OptionValueError",
           "add_common_run_args", "add_model_args", "add_threads_arg", "apply_threads", "check_device", "check_seed",
           "finite_float", "guidance_scale", "guidance_scale_list", "int_list", "model_options", "name_list",
           "non_negative_int", "positive_int", "positive_int_list", "seed_list"]
