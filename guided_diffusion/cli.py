"""Command lines from the typed configuration: one `--flag` per config field, with its help and
default, `--preset NAME[,NAME]` for the released models' flags, and the parsed values back as configs.
"""

import argparse
import dataclasses
import sys
import typing

from .config import flag_help
from .errors import ArgumentParser
from .presets import PRESETS, preset_flags

COMMAND_LINE = "the command line"
DEFAULT = "the defaults"


def str2bool(v):
    """Parse a boolean flag value: yes/true/t/y/1 or no/false/f/n/0, any case."""
    if isinstance(v, bool):
        return v
    words = {"yes": True, "true": True, "t": True, "y": True, "1": True,
             "no": False, "false": False, "f": False, "n": False, "0": False}
    if v.lower() not in words:
        raise argparse.ArgumentTypeError(f"boolean value expected (True/False, yes/no, 1/0), got {v!r}")
    return words[v.lower()]


def config_parser(description, *config_classes):
    """An ArgumentParser with the flags of config_classes (a flag shared by two classes appears once)
    and --preset (and --debug: errors.ArgumentParser); description: the script's docstring."""
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_preset_flag(parser)
    seen = set()
    for cls in config_classes:
        group = parser.add_argument_group(cls.__name__, cls.__doc__)
        hints = typing.get_type_hints(cls)
        for config_field in dataclasses.fields(cls):
            if config_field.name not in seen:
                seen.add(config_field.name)
                _add_field(group, config_field, hints[config_field.name])
    return parser


def _add_field(parser, config_field, hint):
    """One --flag for a config field on parser (or an argument group of it)."""
    default = config_field.default
    options = {"type": type(default), "metavar": type(default).__name__.upper()}
    if isinstance(default, bool):
        options = {"type": str2bool, "metavar": "True|False"}
    elif typing.get_origin(hint) is typing.Literal:
        options = {"type": str, "choices": typing.get_args(hint), "metavar": "{" + ",".join(typing.get_args(hint)) + "}"}
    shown = '""' if default == "" else default
    help_text = f"{flag_help(config_field)} (default: {shown})".replace("%", "%%")
    parser.add_argument(f"--{config_field.name}", default=default, help=help_text, **options)


def _add_preset_flag(parser):
    parser.add_argument("--preset", default="", metavar="NAME[,NAME]",
                        help="a released checkpoint's exact flags (explicit flags win): "
                        + ", ".join(PRESETS) + ' (default: "")')


def parse_args(parser, argv=None):
    """parser.parse_args(argv) with `--preset NAME[,NAME]` supplying the released flags it names.

    A preset's values act as defaults: flags given on the command line win, wherever they stand;
    a preset's flags that the parser lacks (say, classifier flags in image_sample) are left out.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = vars(parser.parse_known_args([])[0])
    if "preset" not in defaults:
        _add_preset_flag(parser)
    names = argparse.ArgumentParser(add_help=False)
    names.add_argument("--preset", default="")
    try:
        preset = preset_flags(names.parse_known_args(argv)[0].preset)
    except ValueError as err:
        parser.error(str(err))
    return parser.parse_args(argv, namespace=argparse.Namespace(**{k: v for k, v in preset.items() if k in defaults}))


def parse_flags(parser, argv=None):
    """parse_args's values as {flag: value}, and where each came from: {flag: COMMAND_LINE, "--preset NAME"
    or DEFAULT}."""
    argv = list(sys.argv[1:] if argv is None else argv)
    values = vars(parse_args(parser, argv))
    origins = dict.fromkeys(values, DEFAULT)
    for name in filter(None, (n.strip() for n in values.get("preset", "").split(","))):
        origins.update({flag: f"--preset {name}" for flag in preset_flags(name) if flag in values})
    unset = object()
    given = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(values, unset)))
    origins.update({flag: COMMAND_LINE for flag, value in vars(given).items() if value is not unset})
    return values, origins


def configs_of(values, config_classes):
    """{flag: value} -> one instance of each config class, from the flags it has."""
    return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)}) for cls in config_classes)


def parse_configs(parser, config_classes, argv=None):
    """The parsed command line as one instance of each config class (with parse_args's presets)."""
    return configs_of(vars(parse_args(parser, argv)), config_classes)
