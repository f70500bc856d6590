"""Each algorithm option is defined once, in the metadata of its ``Config`` field
(:mod:`rl_adapters.algorithms.options`): its help, unit, range or choices.  ``make_config``'s checks and
``bilevel-rl train --help`` are derived from it; these tests hold the three together."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing

import pytest

import bilevel
from rl_adapters import behavior_model
from rl_adapters.algorithms import ALGORITHMS, field_choices, field_ranges, make_config
from rl_adapters.algorithms.aspc import OUTER_TERMS
from rl_adapters.algorithms.options import like, option, range_text
from rl_adapters.cli import build_parser, main
from rl_adapters.errors import UsageError
from rl_adapters.networks import CRITIC_INITS

FIELDS = [(algo, f) for algo, cls in ALGORITHMS.items() for f in dataclasses.fields(cls.Config)]
FIELD_IDS = [f"{algo}.{f.name}" for algo, f in FIELDS]
RANGED = [(algo, name, rng) for algo in ALGORITHMS for name, rng in field_ranges(algo).items()]
# Other fields a value needs to pass the Config's cross-field checks (ARQ: k <= n_candidates).
COMPANIONS = {("arq", "n_candidates"): {"k": 1}}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _hint(algo: str, name: str) -> typing.Any:
    tp = typing.get_type_hints(ALGORITHMS[algo].Config)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else tp  # float | None -> float


def _train_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


def _bracket(helptext: str) -> dict[str, tuple[str, ...] | None]:
    """The leading ``[...]`` of a flag's help: algorithm -> the choices it lists for it (None: no list)."""
    m = re.match(r"\[([^\]]*)\]", helptext)
    assert m, helptext
    out: dict[str, tuple[str, ...] | None] = {}
    for group in m.group(1).split("; "):
        algos, _, values = group.partition(": ")
        for algo in algos.split(", "):
            out[algo] = tuple(values.split("|")) if values else None
    return out


@pytest.mark.parametrize(("algo", "field"), FIELDS, ids=FIELD_IDS)
def test_every_field_has_one_line_help_and_a_consistent_definition(algo, field):
    meta = field.metadata
    assert isinstance(meta.get("help"), str) and meta["help"].strip() and "\n" not in meta["help"]
    assert not (meta.get("range") and meta.get("choices"))
    tp = _hint(algo, field.name)
    if meta.get("choices"):
        assert tp is str and field.default in meta["choices"]
    if meta.get("range"):
        assert tp in (int, float)
        make_config(algo, **{field.name: field.default})  # the default is inside its own range


def test_every_string_option_has_its_choices_from_its_vocabulary():
    """The allowed words are the modules' own tuples, not copies of them."""
    for algo, cls in ALGORITHMS.items():
        hints = typing.get_type_hints(cls.Config)
        assert {f.name for f in dataclasses.fields(cls.Config) if hints[f.name] is str} == set(field_choices(algo))
    arq = field_choices("arq")
    assert (arq["ode_method"], arq["trace"], arq["sampler_grid"]) == (
        behavior_model.ODE_METHODS, behavior_model.TRACES, behavior_model.GRIDS)
    vaco = field_choices("vaco")
    assert (vaco["mode"], vaco["linear_solver"]) == (bilevel.MODES, bilevel.LINEAR_SOLVERS)
    for algo in ("td3bc", "aspc"):
        assert field_choices(algo)["critic_init"] == CRITIC_INITS
    for algo in ("aspc", "aspc-iql"):
        assert field_choices(algo)["outer_terms"] == tuple(OUTER_TERMS)
        assert all(bilevel.check_solver(s, **({} if s == "one_step" else {"steps": 1})) is None
                   for s in field_choices(algo)["solver"])
    for s in field_choices("vaco")["solver"]:
        assert s in bilevel.solver_names()


def test_cli_choices_equal_the_configs():
    actions = _train_actions()
    names = {f.name for _, f in FIELDS}
    for name in names:
        action = actions[f"hp_{name}"]
        listed = _bracket(action.help)
        have = [algo for algo, cls in ALGORITHMS.items() if name in cls.Config.__dataclass_fields__]
        assert list(listed) == have, name
        for algo in have:
            assert listed[algo] == field_choices(algo).get(name), (name, algo)


@pytest.mark.parametrize(("algo", "name"), [(a, n) for a in ALGORITHMS for n in field_choices(a)],
                         ids=[f"{a}.{n}" for a in ALGORITHMS for n in field_choices(a)])
def test_choices_are_enforced(algo, name):
    for value in field_choices(algo)[name]:
        assert getattr(make_config(algo, **{name: value}), name) == value
    with pytest.raises(UsageError, match=re.escape(
            f"{name} ({_flag(name)}) = 'nonsense': must be one of {', '.join(field_choices(algo)[name])} "
            f"for --algo {algo}")):
        make_config(algo, **{name: "nonsense"})


def _outside_inside(bound: float, is_open: bool, direction: int, tp: type) -> tuple[float, float]:
    """A value just outside and one just inside a bound; ``direction`` is +1 for a lower bound, -1 for an upper."""
    if tp is int:
        return (bound, bound + direction) if is_open else (bound - direction, bound)
    bound = float(bound)
    beyond = math.nextafter(bound, -direction * math.inf)
    within = math.nextafter(bound, direction * math.inf)
    return (bound, within) if is_open else (beyond, bound)


@pytest.mark.parametrize(("algo", "name", "rng"), RANGED, ids=[f"{a}.{n}" for a, n, _ in RANGED])
def test_every_range_is_enforced_by_make_config(algo, name, rng):
    lo, hi, lo_open, hi_open = rng
    tp = _hint(algo, name)
    extra = COMPANIONS.get((algo, name), {})
    for bound, is_open, direction in ((lo, lo_open, 1), (hi, hi_open, -1)):
        if bound is None:
            continue
        outside, inside = _outside_inside(bound, is_open, direction, tp)
        assert getattr(make_config(algo, **extra, **{name: inside}), name) == inside
        with pytest.raises(UsageError) as refused:
            make_config(algo, **extra, **{name: outside})
        message = str(refused.value)
        assert message.startswith(f"{name} ({_flag(name)}) = {outside!r}: must be {range_text(rng)}"), message
        assert f"for --algo {algo}; e.g. {_flag(name)} " in message and "\n" not in message


def test_help_shows_each_flags_help_unit_range_default_and_algorithms(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    section = out[out.index("algorithm hyper-parameters"):]
    # One block per flag: its line and the indented lines under it, whitespace normalised.
    blocks = {m.group(1): " ".join(m.group(0).split())
              for m in re.finditer(r"^  (--[a-z0-9-]+)[^\n]*(?:\n {6,}[^\n]*)*", section,
                                   flags=re.MULTILINE)}
    by_flag: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for algo, f in FIELDS:
        by_flag.setdefault(_flag(f.name), []).append((algo, f))
    assert set(blocks) == set(by_flag)
    for flag, owners in by_flag.items():
        text = blocks[flag]
        for algo, f in owners:
            meta = f.metadata
            assert algo in text.split("]")[0], (flag, algo)
            assert " ".join(meta["help"].split()) in text, (flag, algo)
            if meta.get("range"):
                assert range_text(meta["range"]) in text, (flag, algo)
            if meta.get("unit"):
                assert meta["unit"] in text, (flag, algo)
            shown = ("on" if f.default else "off") if isinstance(f.default, bool) else (
                repr(f.default) if isinstance(f.default, float) else str(f.default))
            assert re.search(r"Default: ([^.]|\.\d)*" + re.escape(shown), text), (flag, algo, shown)


def test_help_names_the_default_of_each_algorithm_where_they_differ():
    actions = _train_actions()
    assert actions["hp_batch_size"].help.endswith("Default: 256 (arq: 512).")
    assert actions["hp_outer_terms"].help.endswith("Default: all (aspc-iql: eq1+eq2).")
    assert actions["hp_critic_layer_norm"].help.endswith("Default: off (aspc: on).")


def test_option_refuses_what_cannot_be_one_definition():
    with pytest.raises(ValueError, match="range or choices"):
        option(1, "x", range=(0, None, False, False), choices=("a",))
    with pytest.raises(ValueError, match="one non-empty line"):
        option(1, "")

    @dataclasses.dataclass
    class Plain:
        x: int = 1

    with pytest.raises(TypeError, match="no option metadata"):
        like(Plain, "x", 2)
