"""Options shared by the commands: the one KEY=VALUE `--set` parser and the measurement settings bundle."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from autlearn.engine.settings import MeasureSettings
from autlearn.workloads.models import parse_overrides

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]  # a click option (or a group of them)
MEASURE_FIELDS = (
    "results_root",
    "resume",
    "threads",
    "artifacts",
    "rounds",
    "repetitions",
    "steps",
    "warmup",
    "energy",
    "cluster",
)


def parse_sets(items: tuple[str, ...]) -> dict[str, Any]:
    """`--set KEY=VALUE ...` -> config overrides (autlearn.workloads.models.parse_overrides)."""

    return parse_overrides(items)


def set_option(
    help: str = "Model config override, repeatable (VALUE parsed as JSON when possible), e.g. --set width=0.5.",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=help)


def measure_options(
    *,
    rounds: int = 1,
    repetitions: int = 2,
    steps: int = 10,
    warmup: int = 2,
    energy: str = "auto",
    threads: int | None = None,
    resume_default: bool = False,
    fixed: tuple[str, ...] = (),
    help: dict[str, str] | None = None,
    flags: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Click options for autlearn.engine.settings.MeasureSettings, collected into one `settings` argument.

    The defaults are the command's own; a field in `fixed` gets no option (the command sets it: `settings` then
    holds the default given here). `help` overrides an option's help text, `flags` its flag (e.g.
    {"rounds": "--measure-rounds"}), by field name."""
    flag = {
        "results_root": "--results",
        "repetitions": "--reps",
        **{k: f"--{k}" for k in MEASURE_FIELDS if k not in ("results_root", "repetitions")},
        **(flags or {}),
    }
    texts = {
        "results_root": "Campaign results root; a campaign writes to RESULTS/<name>/.",
        "resume": "Skip cells already finished; rerun the rest.",
        "threads": "Runner threads" + (" (default: runner's own)." if threads is None else "."),
        "artifacts": "Artifact cache (default $AUTLEARN_HOME/artifacts).",
        "rounds": "Run the campaign this many times, pooled (robust to a few slow seconds).",
        "repetitions": "Runner launches per cell (per round).",
        "steps": "Timed steps per runner launch.",
        "warmup": "Untimed steps per runner launch.",
        "energy": "none | fuelgauge | monsoon:SERIAL | auto.",
        "cluster": "Run on the phones of a Ray cluster's agents (HOST:PORT of its head; `autlearn agent start` on "
        "each USB host) instead of this host's adb server.",
        **(help or {}),
    }
    opts = {
        "results_root": click.option(
            flag["results_root"],
            "results_root",
            default="results",
            show_default=True,
            type=click.Path(file_okay=False, path_type=Path),
            help=texts["results_root"],
        ),
        "resume": click.option(flag["resume"], "resume", is_flag=True, default=resume_default, help=texts["resume"]),
        "threads": click.option(
            flag["threads"],
            "threads",
            type=click.IntRange(1, 64),
            default=threads,
            show_default=threads is not None,
            help=texts["threads"],
        ),
        "artifacts": click.option(
            flag["artifacts"],
            "artifacts",
            default=None,
            type=click.Path(file_okay=False, path_type=Path),
            help=texts["artifacts"],
        ),
        "rounds": click.option(
            flag["rounds"],
            "rounds",
            type=click.IntRange(min=1),
            default=rounds,
            show_default=True,
            help=texts["rounds"],
        ),
        "repetitions": click.option(
            flag["repetitions"],
            "repetitions",
            type=click.IntRange(min=1),
            default=repetitions,
            show_default=True,
            help=texts["repetitions"],
        ),
        "steps": click.option(
            flag["steps"], "steps", type=click.IntRange(min=1), default=steps, show_default=True, help=texts["steps"]
        ),
        "warmup": click.option(
            flag["warmup"],
            "warmup",
            type=click.IntRange(min=0),
            default=warmup,
            show_default=True,
            help=texts["warmup"],
        ),
        "energy": click.option(flag["energy"], "energy", default=energy, show_default=True, help=texts["energy"]),
        "cluster": click.option(flag["cluster"], "cluster", default=None, metavar="ADDRESS", help=texts["cluster"]),
    }
    defaults = {
        "results_root": Path("results"),
        "resume": resume_default,
        "threads": threads,
        "artifacts": None,
        "rounds": rounds,
        "repetitions": repetitions,
        "steps": steps,
        "warmup": warmup,
        "energy": energy,
        "cluster": None,
    }

    return option_group(
        MeasureSettings,
        "settings",
        {k: opts[k] for k in MEASURE_FIELDS if k not in fixed},
        {k: defaults[k] for k in fixed},
    )


def option_group(
    settings: Callable[..., Any], into: str, options: Mapping[str, Decorator], fixed: Mapping[str, Any] | None = None
) -> Decorator:
    """Click options collected into one argument of the command: `into` = settings(**values, **fixed).

    `options`: field name -> its click option, whose destination is the field name (in --help in this order).
    Only these options are taken from the command's arguments: a fixed field's name may be the command's own
    (prune's --steps)."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in options}
            return f(*args, **{into: settings(**{**(fixed or {}), **given})}, **kwargs)

        command: Callable[..., Any] = wrapper
        for option in reversed(list(options.values())):
            command = option(command)
        return command

    return decorate
